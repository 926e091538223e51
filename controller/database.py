"""The controller's own durable state: one SQLite file in ``CENTER_DATA_DIR``.

Bookings, staff overrides, the fire latch, alarms, the webhook queue and the
event log live here, each module owning its own tables (``ensure_schema``
functions next to the code that uses them). Everything is written *before* the
action it justifies, so a restart or a ``kill -9`` finds the facts that
explain what the doors did.

Why these pragmas:

- WAL lets the web handlers read while a rule writes, and makes a commit one
  append to the log instead of rewriting pages.
- ``synchronous=NORMAL`` in WAL mode survives a crash of the process (``kill
  -9``): a committed transaction is in the operating system's cache and reaches
  the disk without us. Only a power cut can lose the last commits, and it costs
  no fsync on the path from a fire alarm to the unlock commands. A center's
  controller runs on a UPS-backed box; this is the trade the issue asks for.
- ``busy_timeout`` covers the moment a second process (``centerctl``
  maintenance, a backup) holds the write lock.

The connection is used from the event loop only: each statement is a few tens
of microseconds, cheaper than a hop to a thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DATABASE_FILE = "controller.sqlite3"


def open_database(data_dir: Path | str | None) -> sqlite3.Connection:
    """Open (creating if needed) the controller's database in ``data_dir``.

    ``None`` opens a private in-memory database, for tests that do not care
    about restarts.
    """
    if data_dir is None:
        location = ":memory:"
    else:
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        location = str(directory / DATABASE_FILE)
    connection = sqlite3.connect(location, isolation_level=None, check_same_thread=True)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=5000")
    connection.execute("PRAGMA foreign_keys=ON")
    return connection


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One atomic write: everything inside commits together or not at all.

    Nested use joins the outer transaction, so a helper that writes can be
    called both on its own and as part of a larger change.
    """
    if connection.in_transaction:
        yield connection
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
