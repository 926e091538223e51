"""Pickup codes: six random digits, kept only as salted, deliberately slow hashes.

A code is the only thing between a resident's documents and whoever stands at
the kiosk, and there are only a million of them, so:

- Codes come from :mod:`secrets` (the operating system's CSPRNG), uniform over
  ``000000``..``999999``; the leading zeros are part of the code.
- The database never holds a code, only ``scrypt`` of it with a salt of its
  own. Someone with a copy of the database must run scrypt up to a million
  times *per deposit* to learn one code; without the per-code salt, one pass
  over the million codes would reveal them all.
- Checking a code costs one scrypt per collectable deposit of the cabinet
  (about 15 ms each with the default cost), so :class:`CodeHasher` is meant to
  run on a worker thread (``asyncio.to_thread``), never on the event loop.

The stored form names its parameters (``scrypt$n$r$p$salt$hash``), so a
cheaper or dearer cost can be chosen later without making stored codes
unreadable.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

CODE_DIGITS = 6
CODE_PATTERN = re.compile(r"[0-9]{6}")
_SCHEME = "scrypt"
_SALT_BYTES = 16
_HASH_BYTES = 32


def new_code() -> str:
    """Six uniformly random digits from the CSPRNG, e.g. ``"040213"``."""
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def is_code(text: str) -> bool:
    """Exactly six ASCII digits (no spaces, no other scripts' digits)."""
    return CODE_PATTERN.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class CodeHasher:
    """scrypt with a fresh salt per code. The default cost (n = 2**13, r = 8, 8 MiB
    per hash) takes about 15 ms on a small x86 box; tests may pass a lower ``n``."""

    n: int = 2**13
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1):
            raise ValueError("n must be a power of two greater than 1")
        if self.r < 1 or self.p < 1:
            raise ValueError("r and p must be at least 1")

    def hash(self, code: str) -> str:
        """The stored form of ``code``: ``scrypt$n$r$p$<salt hex>$<hash hex>``."""
        _require_code(code)
        salt = secrets.token_bytes(_SALT_BYTES)
        digest = _scrypt(code, salt, self.n, self.r, self.p)
        return f"{_SCHEME}${self.n}${self.r}${self.p}${salt.hex()}${digest.hex()}"

    def verify(self, code: str, stored: str) -> bool:
        """Whether ``code`` is the code ``stored`` was made from (constant-time compare)."""
        if not is_code(code):
            return False
        n, r, p, salt, expected = _parse(stored)
        return hmac.compare_digest(_scrypt(code, salt, n, r, p), expected)

    def find(self, code: str, stored: Iterable[tuple[int, str]]) -> int | None:
        """The key of the first ``(key, stored form)`` that ``code`` matches, or None."""
        for key, form in stored:
            if self.verify(code, form):
                return key
        return None


def _scrypt(code: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem: OpenSSL's default (32 MiB) refuses n = 2**15 and above with r = 8.
    return hashlib.scrypt(
        code.encode("ascii"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * r * (n + p + 2),
        dklen=_HASH_BYTES,
    )


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes]:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        raise ValueError("not a stored pickup code")
    try:
        return (
            int(parts[1]),
            int(parts[2]),
            int(parts[3]),
            bytes.fromhex(parts[4]),
            (bytes.fromhex(parts[5])),
        )
    except ValueError:
        raise ValueError("not a stored pickup code") from None


def _require_code(code: str) -> None:
    if not is_code(code):
        raise ValueError("a pickup code is exactly six digits")
