"""The synthetic editing suite: an unlimited, seeded sample stream and fixed, versioned val/test sets.

    python -m training.data.suite build-sets --out data/suite        # data/suite/v1/{val,test}/
    python -m training.data.suite build-sets --out data/suite-compose --kinds compose --per-kind 40 --splits val
    python -m training.data.suite preview -o sheet.png                # contact sheet, one row per kind
    python -m training.data.suite sanity                              # verifier sanity table

Photos come from the corpus (``data/corpus``, see ``training.data.corpus``) of the requested split; without
a built corpus the bundled scikit-image photos are used (astronaut/coffee = test, chelsea/rocket = val,
all four for train — enough for CI, not for training).

Each sample is a dict: ``id, kind, category, source (PIL), target (PIL), mask (bool HxW), instruction,
instruction_heldout, reasoning, params, photo_id, grid (cols, rows), suite_version, crop`` (``crop``: the
photo crop the edit program ran on — object kinds draw their source scene onto it; with ``params`` it
re-renders the sample and its wrong variants, see ``edits.render_wrong``). Sample ``i`` of
``stream(split, seed)`` depends only on (seed, split, i), so streams can be resumed at any index.
Samples whose edit barely changes the crop (``verifier.MIN_MAGNITUDE``) are redrawn, so every ground
truth is clearly different from its source.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from training import verifier
from .corpus import SKIMAGE_PHOTOS, load_manifest, random_crop, skimage_candidates
from .edits import KINDS, grid_of, render_wrong
from .edits.kinds import cell_mask, changed_pixels

SUITE_VERSION = "1"
SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
AREA = 128 * 128
SET_SIZES = {"val": 10, "test": 10}
# crop aspect ratios (width / height) a sample is drawn from, square twice as often; every kind takes all of
# them (a quarter turn of a non-square crop has the transposed shape: the model writes the "W*H" header)
ASPECTS = (1.0, 1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3)
_SK_SPLIT = {"astronaut.png": "test", "coffee.png": "test", "chelsea.png": "val", "rocket.jpg": "val"}
assert set(_SK_SPLIT) == set(SKIMAGE_PHOTOS)


def require_corpus(root: str | Path | None) -> None:
    """Stop (SystemExit) when ``root`` names a corpus folder that holds none: ``split_photos`` would fall
    back to scikit-image's 4 photos, two of which are test photos. ``None`` or ``""`` pick them on purpose."""
    if root and not (Path(root) / "manifest.jsonl").exists():
        raise SystemExit(
            f"no photo corpus at {str(root)!r} (manifest.jsonl): build it with python -m training.data.corpus build, or "
            "on a lent GPU machine carry data/corpus; --corpus '' renders scikit-image's 4 sample photos on "
            "purpose (tests only: two of them are test photos)")


def split_photos(split: str, root: str | Path | None = "data/corpus") -> list[tuple[str, Image.Image]]:
    """(photo id, image) of one split: the corpus when built, else scikit-image's bundled photos."""
    if split not in SPLIT_CODE:
        raise ValueError(f"unknown split {split!r}; use train, val or test")
    if root is not None and (Path(root) / "manifest.jsonl").exists():
        rows = [r for r in load_manifest(root) if r["split"] == split]
        out = []
        for r in rows:
            with Image.open(Path(root) / r["file"]) as im:
                out.append((r["id"], im.convert("RGB")))
        if out:
            return out
    cands = skimage_candidates()
    return [(f"skimage-{Path(c.orig_path).stem}", Image.open(c.path).convert("RGB")) for c in cands
            if split == "train" or _SK_SPLIT[Path(c.orig_path).name] == split]


def _acceptable(kind: str, photo: Image.Image, res) -> bool:
    # every connected part of the edit (e.g. old and new place of a moved object) must be visible
    for part in verifier.regions(res.mask):
        if verifier.edit_magnitude(res.source, res.target, part) < verifier.MIN_MAGNITUDE:
            return False
    # objects must stand out from the photo behind them wherever they are (low-contrast cut-outs
    # would make right and wrong placements look alike)
    for bare, scene in res.extra.get("visibility", []):
        m = cell_mask(changed_pixels(bare, scene))
        if m.any() and verifier.edit_magnitude(bare, scene, m) < verifier.MIN_MAGNITUDE:
            return False
    if kind == "compose":
        # every step must matter: without the last one the result must be clearly unfinished,
        # and the first step alone must change the photo visibly
        steps = res.params["steps"]
        prefix = KINDS["compose"].render(photo, {**res.params, "_n": len(steps) - 1})
        if verifier.score(res.source, prefix.target, res.target, res.mask).success > 5:
            return False
        first = KINDS[steps[0]["kind"]].render(photo, steps[0]["params"])
        if verifier.edit_magnitude(first.source, first.target, first.mask) < verifier.MIN_MAGNITUDE:
            return False
    return True


def make_sample(kind: str, photos: Sequence[tuple[str, Image.Image]], rng: np.random.Generator,
                sid: str, area: int = AREA, scales: Sequence[float] | None = None) -> dict:
    """One sample of ``kind`` drawn with ``rng`` (redrawn until the edit is clearly visible).
    ``scales``: crop sizes relative to the photo (default: ``corpus.random_crop``'s, as in the fixed sets)."""
    k = KINDS[kind]
    for _ in range(40):
        pid, photo = photos[int(rng.integers(len(photos)))]
        crop = random_crop(photo, rng, out_area=area, aspects=ASPECTS, **({"scales": scales} if scales else {}))
        res = k.apply(crop, rng)
        if _acceptable(kind, crop, res):
            break
    return {
        "id": sid, "kind": kind, "category": k.category, "source": res.source, "target": res.target,
        "mask": res.mask, "instruction": k.instruction(res.params, rng),
        "instruction_heldout": k.instruction(res.params, rng, heldout=True),
        "reasoning": k.reasoning(res), "params": res.params, "photo_id": pid,
        "grid": list(grid_of(res.source)), "suite_version": SUITE_VERSION, "crop": crop,
    }


def stream(split: str, seed: int = 0, root: str | Path | None = "data/corpus",
           kinds: Sequence[str] | None = None, start: int = 0, area: int = AREA,
           corpus: str | Path | None = None, scales: Sequence[float] | None = None) -> Iterator[dict]:
    """Unlimited samples; kinds drawn uniformly. Deterministic in (split, seed, index).
    ``corpus`` is an alias of ``root`` (the corpus folder; ``root=None``: scikit-image photos).
    ``scales``: crop sizes (see ``make_sample``); smaller ones show the model more varied content."""
    if corpus is not None:
        root = corpus
    kinds = list(kinds or KINDS)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown edit kinds {bad}; known: {list(KINDS)}")
    photos = split_photos(split, root)
    i = start
    while True:
        rng = np.random.default_rng([seed, SPLIT_CODE[split], i])
        kind = kinds[int(rng.integers(len(kinds)))]
        yield make_sample(kind, photos, rng, f"{split}-s{seed}-{i:07d}", area, scales)
        i += 1


def rephrase(sample: dict, rng: np.random.Generator, heldout: bool = False) -> str:
    """Another instruction for the same sample (training phrasings, or held-out ones)."""
    return KINDS[sample["kind"]].instruction(sample["params"], rng, heldout)


# ----------------------------------------------------------------------------- fixed sets


def build_sets(out: str | Path, root: str | Path | None = "data/corpus", seed: int = 1234,
               sizes: dict[str, int] | None = None, kinds: Sequence[str] | None = None) -> Path:
    """Write ``<out>/v<SUITE_VERSION>/<split>/`` with PNGs and ``samples.jsonl`` (``n`` per kind).
    ``kinds``: only these (a sample depends on its split, kind and index alone, so a larger set of a few
    kinds starts with the fixed sets' samples of those kinds)."""
    sizes = sizes or SET_SIZES
    unknown = sorted(set(kinds or ()) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown edit kind(s) {unknown}; choose from {', '.join(KINDS)}")
    base = Path(out) / f"v{SUITE_VERSION}"
    for split, n in sizes.items():
        d = base / split
        (d / "images").mkdir(parents=True, exist_ok=True)
        photos = split_photos(split, root)
        lines = []
        for ki, kind in enumerate(KINDS):
            if kinds and kind not in kinds:
                continue
            for j in range(n):
                rng = np.random.default_rng([seed, SPLIT_CODE[split], ki, j])
                s = make_sample(kind, photos, rng, f"{split}-{kind}-{j:03d}")
                files = {}
                for part in ("source", "target"):
                    files[part] = f"images/{s['id']}_{part}.png"
                    s[part].save(d / files[part])
                files["mask"] = f"images/{s['id']}_mask.png"
                Image.fromarray(s["mask"].astype(np.uint8) * 255).save(d / files["mask"])
                rec = {k: v for k, v in s.items() if k not in ("source", "target", "mask", "crop")}
                rec["files"] = files
                lines.append(json.dumps(rec))
        (d / "samples.jsonl").write_text("\n".join(lines) + "\n")
    # keep the sizes of the splits this call did not rebuild (built before with the same seed and kinds)
    written = dict(sizes)
    built_kinds = [k for k in KINDS if not kinds or k in kinds]
    version = base / "VERSION.json"
    if version.exists():
        old = json.loads(version.read_text())
        if (old.get("seed"), old.get("suite_version"), old.get("kinds")) == (seed, SUITE_VERSION, built_kinds):
            written = {**old.get("sizes", {}), **sizes}
    version.write_text(json.dumps({"suite_version": SUITE_VERSION, "seed": seed, "sizes": written,
                                   "kinds": built_kinds}, indent=1))
    return base


def load_set(path: str | Path, split: str) -> list[dict]:
    """Read a split written by ``build_sets`` (``path`` = the versioned folder, e.g. data/suite/v1)."""
    d = Path(path) / split
    out = []
    for line in (d / "samples.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        for part in ("source", "target"):
            with Image.open(d / r["files"][part]) as im:
                r[part] = im.convert("RGB")
        with Image.open(d / r["files"]["mask"]) as im:
            r["mask"] = np.asarray(im.convert("L")) > 127
        out.append(r)
    return out


# ----------------------------------------------------------------------------- preview / sanity


def preview(path: str | Path, root: str | Path | None = "data/corpus", split: str = "val", seed: int = 0) -> Path:
    """Contact sheet: one row per kind — source | target | mask over target | instruction + reasoning."""
    photos = split_photos(split, root)
    cellw, rowh, textw = 160, 170, 470
    kinds = list(KINDS)
    sheet = Image.new("RGB", (3 * cellw + textw, rowh * len(kinds) + 24), "white")
    d = ImageDraw.Draw(sheet)
    for x, t in ((0, "source"), (cellw, "target"), (2 * cellw, "mask"), (3 * cellw, "instruction / reasoning")):
        d.text((x + 4, 6), t, fill="black")
    for r, kind in enumerate(kinds):
        rng = np.random.default_rng([seed, r])
        s = make_sample(kind, photos, rng, f"preview-{kind}")
        y = 24 + r * rowh
        m = Image.fromarray((s["mask"] * 255).astype(np.uint8))
        over = Image.composite(s["target"], Image.blend(s["target"], Image.new("RGB", s["target"].size, "black"), 0.7), m)
        for c, im in enumerate((s["source"], s["target"], over)):
            sheet.paste(im, (c * cellw + (cellw - im.size[0]) // 2, y + 4))
        txt = f"[{kind}] {s['instruction']}\nheld-out: {s['instruction_heldout']}\n{s['reasoning']}"
        lines = []
        for para in txt.split("\n"):
            lines += textwrap.wrap(para, 76) or [""]
        d.text((3 * cellw + 4, y + 4), "\n".join(lines[:11]), fill="black")
        d.line([(0, y + rowh - 2), (sheet.size[0], y + rowh - 2)], fill=(200, 200, 200))
    sheet.save(path)
    return Path(path)


def sanity(root: str | Path | None = "data/corpus", split: str = "test", n: int = 4, seed: int = 7) -> list[dict]:
    """Mean verifier scores per kind for: ground truth, ground truth through a VQ-like degradation,
    the unedited source, and each wrong edit."""
    photos = split_photos(split, root)
    rows = []
    for ki, kind in enumerate(KINDS):
        acc: dict[str, list[float]] = {}
        labels: set[str] = set()
        for j in range(n):
            rng = np.random.default_rng([seed, ki, j])
            s = make_sample(kind, photos, rng, "sanity")
            outs = [("gt", s["target"]), ("gt_vq", verifier.vq_like_degrade(s["target"], rng)), ("source", s["source"])]
            for label, wp in KINDS[kind].wrongs(s["params"], rng):
                outs.append(("wrong", render_wrong(kind, s["crop"], wp).target))
                labels.add(label)
            for name, out in outs:
                acc.setdefault(name, []).append(verifier.score(s["source"], out, s["target"], s["mask"]).overall)
        rows.append({"kind": kind, **{k: float(np.mean(v)) for k, v in acc.items()},
                     "wrong_min": float(np.min(acc["wrong"])), "wrong_max": float(np.max(acc["wrong"])),
                     "wrong_label": ", ".join(sorted(labels))})
    return rows


def print_sanity(rows: list[dict]) -> None:
    print(f"{'kind':16s} {'gt':>5s} {'gt+VQ':>6s} {'source':>6s} {'wrong':>6s} {'(max)':>6s}  wrong edit")
    for r in rows:
        print(f"{r['kind']:16s} {r['gt']:5.1f} {r['gt_vq']:6.1f} {r['source']:6.1f} {r['wrong']:6.1f} "
              f"{r['wrong_max']:6.1f}  {r['wrong_label']}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.data.suite")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-sets", help="write the fixed val/test sets")
    b.add_argument("--out", default="data/suite")
    b.add_argument("--corpus", default="data/corpus")
    b.add_argument("--per-kind", type=int, default=None, help="samples per kind (default val 10, test 10)")
    b.add_argument("--kinds", default=None, metavar="K,K,…", help="only these edit kinds (default: all)")
    b.add_argument("--splits", default="val,test", metavar="S,S", help="which splits to write")
    p = sub.add_parser("preview", help="contact sheet PNG, one row per edit kind")
    p.add_argument("-o", "--out", default="sheet.png")
    p.add_argument("--corpus", default="data/corpus")
    p.add_argument("--split", default="val")
    p.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("sanity", help="print the verifier sanity table")
    s.add_argument("--corpus", default="data/corpus")
    s.add_argument("--split", default="test")
    s.add_argument("-n", type=int, default=4)
    a = ap.parse_args(argv)
    if a.cmd == "build-sets":
        splits = [x for x in a.splits.split(",") if x]
        if not splits or set(splits) - set(SET_SIZES):
            ap.error(f"--splits: choose from {', '.join(SET_SIZES)}")
        sizes = {k: a.per_kind or SET_SIZES[k] for k in splits}
        kinds = [k for k in a.kinds.split(",") if k] if a.kinds else None
        print(f"wrote {build_sets(a.out, a.corpus, sizes=sizes, kinds=kinds)}")
    elif a.cmd == "preview":
        print(f"wrote {preview(a.out, a.corpus, a.split, a.seed)}")
    else:
        print_sanity(sanity(a.corpus, a.split, a.n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
