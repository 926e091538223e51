"""Pickup codes: six CSPRNG digits, stored only as salted scrypt hashes."""

from __future__ import annotations

import hashlib
import time
from collections import Counter

import pytest

from controller.pickup_codes import CodeHasher, is_code, new_code

DRAWS = 20_000


def test_codes_are_six_ascii_digits_with_leading_zeros_kept() -> None:
    codes = [new_code() for _ in range(DRAWS)]

    assert all(len(code) == 6 and is_code(code) for code in codes)
    # About one in ten starts with 0: the leading zero is part of the code, not dropped.
    assert sum(code.startswith("0") for code in codes) > DRAWS * 0.08


def test_codes_are_uniform_digit_by_digit() -> None:
    codes = [new_code() for _ in range(DRAWS)]
    # Each of the 6 positions: every digit about DRAWS / 10 times. The chi-square
    # statistic of 9 degrees of freedom exceeds 60 with probability about 1e-9, so
    # a fair generator never fails this; a biased one fails it by far (a modulo
    # bias such as getrandbits(20) % 10**6 puts the first position near 350).
    for position in range(6):
        counts = Counter(code[position] for code in codes)
        expected = DRAWS / 10
        chi_square = sum((counts[str(d)] - expected) ** 2 / expected for d in range(10))
        assert chi_square < 60, (position, counts)


def test_codes_rarely_repeat() -> None:
    codes = [new_code() for _ in range(DRAWS)]
    # Birthday bound: about DRAWS**2 / 2e6 = 200 repeats expected among a million values;
    # a generator of fewer values (or a stuck one) repeats far more often.
    repeats = DRAWS - len(set(codes))
    assert repeats < 320


@pytest.mark.parametrize(
    "text",
    [
        "12345",
        "1234567",
        "12345a",
        " 123456",
        "\uff11\uff12\uff13\uff14\uff15\uff16",
        "\u0660\u0661\u0662\u0663\u0664\u0665",
        "",
    ],
)
def test_only_six_ascii_digits_are_a_code(text: str) -> None:
    assert not is_code(text)


def test_a_hash_verifies_its_code_and_no_other() -> None:
    hasher = CodeHasher()
    stored = hasher.hash("042917")

    assert hasher.verify("042917", stored)
    assert not hasher.verify("042918", stored)
    assert not hasher.verify("42917", stored)
    assert not hasher.verify("", stored)


def test_the_stored_form_reveals_nothing_of_the_code() -> None:
    hasher = CodeHasher()
    first, second = hasher.hash("123456"), hasher.hash("123456")

    assert "123456" not in first
    assert first != second  # a salt of its own: equal codes do not look equal
    assert first.startswith("scrypt$8192$8$1$")
    # Not a plain (unsalted) digest of the code either.
    for plain in (hashlib.sha256(b"123456").hexdigest(), hashlib.md5(b"123456").hexdigest()):
        assert plain not in first


def test_hashing_is_deliberately_slow_but_fits_a_kiosk() -> None:
    hasher = CodeHasher()
    started = time.perf_counter()
    stored = hasher.hash("555555")
    hasher.verify("555555", stored)
    elapsed = (time.perf_counter() - started) / 2

    assert 0.002 < elapsed < 0.5


def test_a_stored_form_keeps_its_cost_when_the_default_changes() -> None:
    stored = CodeHasher(n=1024, r=4).hash("000001")

    assert CodeHasher().verify("000001", stored)


def test_find_names_the_matching_deposit() -> None:
    hasher = CodeHasher(n=16, r=1)
    stored = [(1, hasher.hash("111111")), (2, hasher.hash("222222"))]

    assert hasher.find("222222", stored) == 2
    assert hasher.find("333333", stored) is None


@pytest.mark.parametrize("stored", ["", "sha256$x", "scrypt$a$8$1$00$00", "scrypt$16$1$1$zz$00"])
def test_a_damaged_stored_form_is_an_error(stored: str) -> None:
    with pytest.raises(ValueError, match="not a stored pickup code"):
        CodeHasher().verify("123456", stored)


def test_a_code_that_is_not_six_digits_is_not_hashed() -> None:
    with pytest.raises(ValueError, match="exactly six digits") as caught:
        CodeHasher().hash("12345")
    assert "12345" not in str(caught.value)
