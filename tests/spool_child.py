"""A process that appends numbered batches to a spool until it is killed.

Run as ``python -m tests.spool_child DIRECTORY``: it appends batch 0, 1, 2, …
(``batch(number)``, fsync'd) and prints each number on stdout once ``append``
has returned, so the parent knows exactly which batches were acknowledged
before it sends SIGKILL.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

from controller.timeseries.spool import Spool

POINTS = 400


def batch(number: int) -> bytes:
    """Batch ``number``: POINTS lines whose timestamps count up from number * POINTS."""
    first = number * POINTS
    return b"".join(
        b"kill,batch=%d line=%di %d\n" % (number, index, first + index) for index in range(POINTS)
    )


def main(argv: list[str]) -> None:
    spool = Spool(Path(argv[1]), max_bytes=1 << 30, segment_bytes=256 * 1024, fsync=True)
    for number in itertools.count():
        spool.append(batch(number), POINTS, number * POINTS)
        print(number, flush=True)


if __name__ == "__main__":
    main(sys.argv)
