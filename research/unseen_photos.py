"""Everyday instructions on photos no EARL-nano stage saw: is the full-size result the edit asked for?

    python -m research.unseen_photos [PHOTO ...] [--sheet sheet.png]

Photos: scikit-learn's two sample photographs (``china.jpg``, ``flower.jpg``; installed with scikit-learn)
plus any given. Each gets twelve everyday instructions (colour, tone, flips, turns, zoom), one candidate,
seed 0, the studio's sampling, through ``engine.edit`` at full resolution. A colour or tone edit counts as
right when the render explained the output as a colour change of the unmoved photo; a flip, turn or zoom
when it found that transform. Prints each edit's render method and transform, then
``unseen_photos right=<n> of=<n>``; ``--sheet`` writes a contact sheet (photo, then its twelve results).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

EDITS = {"turn it black and white": "identity", "give it a vintage sepia look": "identity", "warm it up": "identity",
         "make it cooler": "identity", "brighten it up": "identity", "make it darker": "identity",
         "more contrast please": "identity", "mirror it": "hflip", "flip it upside down": "vflip",
         "rotate it 90 degrees": "rotate90_cw", "turn it upside down": "rotate180", "zoom in on the middle": "zoom"}


def photos(extra: list[str]) -> list[tuple[str, Image.Image]]:
    out = []
    try:
        import sklearn.datasets

        root = Path(sklearn.datasets.__file__).parent / "images"
        out += [(n, Image.open(root / n).convert("RGB")) for n in ("china.jpg", "flower.jpg")]
    except ImportError:
        print("scikit-learn is not installed: its two sample photos are left out")
    for p in extra:
        im = Image.open(p).convert("RGB")
        im.thumbnail((1600, 1600))
        out.append((Path(p).name, im))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m research.unseen_photos", description=__doc__.split("\n")[0])
    ap.add_argument("photos", nargs="*")
    ap.add_argument("--sheet", default=None)
    args = ap.parse_args(argv)

    from engine.api import edit_blocking
    from engine.bundle import default_bundle_path, load_bundle

    bundle = load_bundle(default_bundle_path())
    temperature = bundle.config.sampling.get("temperature", 1.0)
    right = n = 0
    rows = []
    for name, im in photos(args.photos):
        cells = [im]
        for text, want in EDITS.items():
            (d,) = edit_blocking(bundle, im, text, n=1, seed=0, temperature=temperature)
            got = d.render.get("transform", {}).get("name") if d.render.get("method") != "upsampled" else "fallback"
            ok = got == want
            right, n = right + ok, n + 1
            print(f"{name:16s} {text:30s} {d.render.get('method')} {got} {'right' if ok else 'WRONG'}", flush=True)
            cells.append(d.full)
        rows.append(cells)
    if args.sheet:
        w, h = 200, 150
        sheet = Image.new("RGB", (w * (len(EDITS) + 1), (h + 14) * len(rows) + 14), "white")
        draw = ImageDraw.Draw(sheet)
        for j, text in enumerate(["photo", *EDITS]):
            draw.text((j * w + 2, 0), text[:30], fill="black")
        for i, cells in enumerate(rows):
            for j, c in enumerate(cells):
                c = c.copy()
                c.thumbnail((w - 4, h))
                sheet.paste(c, (j * w + 2, 14 + i * (h + 14)))
        sheet.save(args.sheet)
    print(f"unseen_photos right={right} of={n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
