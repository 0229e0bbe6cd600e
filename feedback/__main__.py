"""Export the feedback store to a Hugging Face ``datasets`` folder, or import one into it.

    python -m feedback export ~/earl-export            # the studio's store (~/.earl-studio)
    python -m feedback export ~/earl-export --data DIR # another data folder
    python -m feedback import ~/earl-export --data DIR # merge an export into a store (idempotent)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from feedback.store import Store, default_data_dir


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m feedback", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("export", "import"))
    p.add_argument("folder", type=Path, help="the dataset folder to write (export) or read (import)")
    p.add_argument("--data", type=Path, default=None, help="the store's data folder (default: ~/.earl-studio)")
    args = p.parse_args(argv)
    with Store((args.data or default_data_dir()).expanduser()) as store:
        if args.action == "import":
            added = store.import_dataset(args.folder)
            print(f"imported {added['candidates']} candidates and {added['ratings']} ratings")
            return
        out = store.export_dataset(args.folder)
        counts = store.counts()
    print(f"exported {counts['candidates']} candidates and {counts['ratings']} ratings to {out}\n"
          f"open it with: datasets.load_from_disk({str(out)!r})  or  "
          f"datasets.load_dataset({str(out)!r}, \"ratings\", split=\"train\")")


if __name__ == "__main__":
    main()
