"""Summarise a py-spy raw (collapsed stacks) profile: where the time goes, as text.

    python bench/ingest.py --rate 40000 --profile /tmp/ingest.txt
    python bench/pyspy_top.py /tmp/ingest.txt [--top 25] [--lines]

Prints the functions with the most *self* time (the frame on top of the stack) and
the most *inclusive* time (anywhere on the stack, counted once per sample), each as a
share of all samples. Frames are grouped by function and file; ``--lines`` keeps
line numbers apart.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def frame_name(frame: str, *, keep_lines: bool) -> str:
    """``func (path/file.py:123)`` -> ``func (path/file.py)`` unless lines are kept."""
    return frame if keep_lines else _LINE.sub(")", frame)


def summarise(path: Path, *, keep_lines: bool) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, self samples per frame, inclusive samples per frame."""
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(frame, keep_lines=keep_lines) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return total, own, inclusive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="py-spy record --format raw output")
    parser.add_argument("--top", type=int, default=25, help="rows per table")
    parser.add_argument("--lines", action="store_true", help="keep line numbers apart")
    args = parser.parse_args(argv)
    total, own, inclusive = summarise(args.profile, keep_lines=args.lines)
    if not total:
        print(f"{args.profile}: no samples", file=sys.stderr)
        return 1
    for title, table in (("self", own), ("inclusive", inclusive)):
        print(f"\nTop {args.top} by {title} time ({total:,} samples)")
        for frame, count in table.most_common(args.top):
            print(f"  {100 * count / total:5.1f} %  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
