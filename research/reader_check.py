"""How often a reader gets the edit kinds of a development set right.

    python -m research.reader_check research/reader_and_dev.tsv [--folder assets/earl-nano/understanding]

Each line of the set: the kinds in order, comma-separated, a tab, the text. Prints each miss, then
``reader_check right=<n> of=<n>``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m research.reader_check", description=__doc__.split("\n")[0])
    ap.add_argument("set")
    ap.add_argument("--folder", default="assets/earl-nano/understanding")
    args = ap.parse_args(argv)

    from engine.understanding import Understanding

    reader = Understanding(args.folder)
    rows = [line.split("\t") for line in Path(args.set).read_text().splitlines() if line.strip()]
    right = 0
    for kinds, text in rows:
        got = [s.kind for s in reader.read(text).steps]
        if got == kinds.split(","):
            right += 1
        else:
            print(f"  miss: {text!r} -> {','.join(got)} (want {kinds})")
    print(f"reader_check right={right} of={len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
