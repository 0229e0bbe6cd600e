"""Do flips and half turns fail on photo shapes the model never saw, and does cropping to a known shape help?

    python -m research.aspect_probe [--photos 4] [--seeds 2]

Held-out (val/test) photos of the corpus are center-cropped to shapes the suite never trains on (16:9,
9:16, 16:10, 6:7, 7:10) and to two it does (3:2, 3:4); each is flipped both ways and turned half way with
the shipped EARL-nano, through ``engine.edit`` at full resolution, once with the bundle's ``aspects``
(the photo cropped to the nearest trained shape for the model) and once without (the photo's own shape).
A result counts as right when the full-resolution render found the asked-for transform (not a fallback
to the upsampled model output). Last line:
``aspect_probe own_shape=<share right> trained_shape=<share right> n=<edits each>``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

SHAPES = {"16:9": 16 / 9, "9:16": 9 / 16, "16:10": 1.6, "6:7": 6 / 7, "7:10": 0.7, "3:2": 1.5, "3:4": 0.75}
EDITS = {"Flip it horizontally.": "hflip", "Flip it vertically.": "vflip", "Rotate it 180 degrees.": "rotate180"}


def crop_to(im: Image.Image, aspect: float) -> Image.Image:
    w, h = im.size
    if w / h > aspect:
        nw = round(h * aspect)
        return im.crop(((w - nw) // 2, 0, (w - nw) // 2 + nw, h))
    nh = round(w / aspect)
    return im.crop((0, (h - nh) // 2, w, (h - nh) // 2 + nh))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m research.aspect_probe", description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--photos", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args(argv)

    from engine.api import edit_blocking
    from engine.bundle import default_bundle_path, load_bundle

    bundle = load_bundle(default_bundle_path())
    trained = list(bundle.config.aspects)
    rows = [json.loads(x) for x in (Path(args.corpus) / "manifest.jsonl").read_text().splitlines() if x.strip()]
    paths = sorted(Path(args.corpus) / r["file"] for r in rows if r.get("split") in ("val", "test"))
    photos = [Image.open(p).convert("RGB") for p in paths[: args.photos]]
    right = {"own": 0, "trained": 0}
    n = 0
    for name, aspect in SHAPES.items():
        tally = {"own": 0, "trained": 0}
        for photo in photos:
            im = crop_to(photo, aspect)
            for text, want in EDITS.items():
                for seed in range(args.seeds):
                    n += 1
                    for mode, aspects in (("own", []), ("trained", trained)):
                        bundle.config.aspects = aspects
                        (d,) = edit_blocking(bundle, im, text, n=1, seed=seed)
                        ok = d.render.get("method") != "upsampled" and d.render.get("transform", {}).get("name") == want
                        tally[mode] += ok
                        right[mode] += ok
        each = len(photos) * len(EDITS) * args.seeds
        print(f"{name:6s} own shape {tally['own']}/{each}  cropped to a trained shape {tally['trained']}/{each}",
              flush=True)
    bundle.config.aspects = trained
    print(f"aspect_probe own_shape={right['own'] / n:.3f} trained_shape={right['trained'] / n:.3f} n={n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
