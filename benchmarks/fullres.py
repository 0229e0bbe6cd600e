"""Full-resolution results (``engine.render``) against exact full-resolution ground truth.

    python -m benchmarks.fullres [--corpus data/corpus] [--photos A.jpg B.jpg …] [--max-photos 4]
                                 [--model-photos 1] [--no-model] [--bundle PATH] [--seed 0]

Photos: ``--photos`` when given; else the held-out (val/test) photos of a built corpus
(``training.data.corpus``; the originals are read from ``<corpus>/../cache/unpacked/<package>/<orig_path>``)
of at least 1 MP; else, on a fresh machine without a corpus, scikit-image's sample photographs at their
own (smaller) size — they are held-out photos of every corpus. Each photo is first center-cropped to the
aspect ratio of its model-resolution picture (the bundle's nearest trained shape), so the model sees all of it and a zoom's ground truth
and the model's zoom cover the same window.

For every edit kind of the suite (``training.data.edits.kinds``; ``compose`` aside), with parameters drawn
from ``--seed``: the edit is applied at full resolution (exact ground truth) and the model side is the
full-resolution source fitted to the model's size (``image_io.fit_to_area``) and encoded (a quarter turn
of a non-square photo has the transposed size). Three full-resolution results are compared with the
ground truth:

* ``bicubic``: the model's output (EARL-nano, ``engine.edit`` with the kind's held-out instruction,
  temperature 0) upscaled bicubically — what the engine returned before ``engine.render``;
* ``render``: ``engine.render.render_full`` of the same output, told what the instruction asks as
  ``engine.edit`` tells it (``Reading.render_hints``: whether new content may come in, whether the result is
  black and white);
* ``oracle``: ``render_full`` fed the exact low-resolution ground truth as the image tokenizer
  reproduces it (``decode(encode(.))``) instead of the model's output, told the same: the method's ceiling. For object
  kinds the oracle's codes are the source's outside the token cells the edit changes (what a perfect
  model writes: it copies them), the ground truth's inside.

The model runs on CPU (several seconds per edit), so (a)/(b) cover the first ``--model-photos`` photos
only; the oracle covers all. PSNR is capped at 60 dB (an exact flip would be infinite) and averaged per
kind over photos; SSIM is scikit-image's on the RGB image. A result of another size than the ground
truth (a fallback of the wrong orientation) is resized to it bicubically before measuring. Object kinds
also report PSNR inside and outside the changed area (the kind's mask at full resolution; "outside"
is 60 when every pixel there is identical). ``s_12mp``: median seconds of ``render_full`` over 3 runs
on a 4000×3000 photo (the first photo resized) for a colour edit, a flip and an added object (oracle
outputs), on 2 torch threads; the slowest of the three.

Last line: ``fullres psnr_bicubic=… psnr_render=… psnr_oracle=… ssim_render=… s_12mp=… n=…`` with the
PSNRs averaged over the global and geometric kinds (bicubic/render over the model's runs, oracle over
all), ``ssim_render`` likewise, and ``n`` the number of (photo, kind) model runs in those averages.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.image_io import bundle_aspects, fit_to_area, load_image, target_size
from engine.render import render_full
from training.data.edits.kinds import changed_pixels, mask_cells

PSNR_CAP = 60.0
MIN_PIXELS = 1_000_000


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    d = a.astype(np.float32) - b.astype(np.float32)
    d = d * d
    if mask is not None:
        if not mask.any():
            return float("nan")
        d = d[mask]
    mse = float(d.mean())
    return PSNR_CAP if mse <= 0 else min(PSNR_CAP, 10 * np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def held_out_photos(corpus: Path, max_photos: int) -> list[tuple[str, Image.Image]]:
    """(name, photo) of the corpus's val/test originals of at least 1 MP, largest first."""
    mf = corpus / "manifest.jsonl"
    if not mf.exists():
        return []
    rows = [json.loads(line) for line in mf.read_text().splitlines() if line.strip()]
    out = []
    for r in rows:
        if r.get("split") not in ("val", "test") or r.get("source") == "skimage":
            continue
        path = corpus.parent / "cache" / "unpacked" / r["package"] / r["orig_path"]
        if path.exists():
            out.append((r["id"], path))
    out.sort(key=lambda t: t[0])
    photos = []
    for name, path in out:
        im = load_image(path)
        if im.width * im.height >= MIN_PIXELS:
            photos.append((name, im))
        if len(photos) >= max_photos:
            break
    return photos


def skimage_photos() -> list[tuple[str, Image.Image]]:
    import skimage.data

    return [(n, Image.fromarray(getattr(skimage.data, n)())) for n in ("astronaut", "coffee", "chelsea", "rocket")]


def crop_to_model_aspect(im: Image.Image, area: int, factor: int, aspects: tuple[float, ...] = ()) -> Image.Image:
    tw, th = target_size(im.width, im.height, area, factor, aspects=aspects)
    w, h = im.size
    if w * th > h * tw:
        nw = round(h * tw / th)
        left = (w - nw) // 2
        return im.crop((left, 0, left + nw, h))
    nh = round(w * th / tw)
    top = (h - nh) // 2
    return im.crop((0, top, w, top + nh))


def kinds() -> dict:
    from training.data.edits.kinds import KINDS

    return {k: v for k, v in KINDS.items() if v.category in ("global", "geometry", "object")}


def ground_truth(kind, photo: Image.Image, params: dict):
    """(source, target, mask) at full resolution (the mask for object kinds only)."""
    res = kind.render(photo, params)
    return res.source, res.target, (res.mask if kind.category == "object" else None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fullres", description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--photos", nargs="*", default=None)
    ap.add_argument("--max-photos", type=int, default=4)
    ap.add_argument("--model-photos", type=int, default=1)
    ap.add_argument("--no-model", action="store_true")
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from engine.bundle import default_bundle_path, load_bundle

    bundle = load_bundle(Path(args.bundle) if args.bundle else default_bundle_path())
    area, factor = bundle.config.image_area, bundle.vq.spatial_factor

    if args.photos:
        photos = [(Path(p).stem, load_image(p)) for p in args.photos]
        where = "given"
    else:
        photos = held_out_photos(Path(args.corpus), args.max_photos)
        where = f"held-out originals of {args.corpus}"
        if not photos:
            photos, where = skimage_photos()[: args.max_photos], "scikit-image samples (below 1 MP: no corpus)"
    photos = [(n, crop_to_model_aspect(p, area, factor, bundle_aspects(bundle))) for n, p in photos]
    print(f"photos ({where}): " + ", ".join(f"{n} {p.width}x{p.height}" for n, p in photos))

    def tok(im: Image.Image) -> Image.Image:
        return bundle.vq.decode([np.asarray(bundle.vq.encode([im])[0])])[0]

    from engine.api import edit_blocking
    from engine.understanding import for_bundle

    reader = for_bundle(bundle)

    ks = kinds()
    rows: dict[str, list[dict]] = {k: [] for k in ks}
    oracle_outs: dict[str, tuple[Image.Image, Image.Image, Image.Image]] = {}
    for pi, (pname, photo) in enumerate(photos):
        rng = np.random.default_rng(args.seed + pi)
        for name, kind in ks.items():
            params = kind.sample(photo, rng)
            src_full, gt_full, mask = ground_truth(kind, photo, params)
            src_low = fit_to_area(src_full, area, factor)
            gt_low = fit_to_area(gt_full, area, factor)
            s_codes = np.asarray(bundle.vq.encode([src_low])[0])
            o_codes = np.asarray(bundle.vq.encode([gt_low])[0])
            if mask is not None:  # a perfect model copies the source's codes outside the edit
                keep = ~mask_cells(changed_pixels(src_low, gt_low), factor)
                o_codes = np.where(keep, s_codes, o_codes)
            s_tok, o_tok = bundle.vq.decode([s_codes, o_codes])
            gt = np.asarray(gt_full)
            r: dict = {"photo": pname}

            def measure(tag: str, im: Image.Image, gt=gt, r=r, mask=mask, gt_full=gt_full) -> None:
                if im.size != gt_full.size:
                    im = im.resize(gt_full.size, Image.Resampling.BICUBIC)
                a = np.asarray(im)
                r[f"psnr_{tag}"] = psnr(a, gt)
                if mask is not None:
                    r[f"in_{tag}"] = psnr(a, gt, mask)
                    r[f"out_{tag}"] = psnr(a, gt, ~mask)
                if tag != "bicubic":
                    r[f"ssim_{tag}"] = ssim(a, gt)

            instr = kind.instruction(params, np.random.default_rng(args.seed), heldout=True)
            hints = reader.read(instr).render_hints() if reader is not None else {}  # as engine.edit reads it
            orc = render_full(src_full, s_tok, o_tok, **hints)
            measure("oracle", orc.image)
            r["oracle_method"] = orc.provenance.get("method")
            if pi == 0:
                oracle_outs[name] = (src_full, s_tok, o_tok)
            if not args.no_model and pi < args.model_photos:
                done = edit_blocking(bundle, src_low, instr, n=1, seed=args.seed, temperature=0.0,
                                     full_resolution=False)[0]
                out = done.image
                measure("bicubic", out.resize(gt_full.size, Image.Resampling.BICUBIC))
                ren = render_full(src_full, s_tok, out, **hints)
                measure("render", ren.image)
                r["render_method"] = ren.provenance.get("method")
                r["transform"] = ren.provenance.get("transform", {}).get("name")
                r["instruction"] = instr
            rows[name].append(r)
            msg = " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                           if k != "instruction")
            print(f"  {name:16s} {msg}", flush=True)

    def avg(vals: list[float]) -> float:
        vals = [v for v in vals if v == v]
        return statistics.fmean(vals) if vals else float("nan")

    def col(name: str, key: str) -> float:
        return avg([r[key] for r in rows[name] if key in r])

    print("\n| kind | category | bicubic | render | oracle | ssim render | ssim oracle | render in/out | oracle in/out "
          "| bicubic in/out | render method |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, kind in ks.items():
        inout = ""
        if kind.category == "object":
            inout = [f"{col(name, 'in_' + t):.1f} / {col(name, 'out_' + t):.1f}" for t in ("render", "oracle", "bicubic")]
        else:
            inout = ["", "", ""]
        methods = ",".join(sorted({r.get("render_method", "") for r in rows[name]} - {""}))
        print(f"| {name} | {kind.category} | {col(name, 'psnr_bicubic'):.2f} | {col(name, 'psnr_render'):.2f} | "
              f"{col(name, 'psnr_oracle'):.2f} | {col(name, 'ssim_render'):.3f} | {col(name, 'ssim_oracle'):.3f} | "
              f"{inout[0]} | {inout[1]} | {inout[2]} | {methods} |")

    # render time at 12 MP on 2 threads
    torch.set_num_threads(2)
    big_photo = photos[0][1].resize((4000, 3000), Image.Resampling.BICUBIC)
    times = {}
    for name in ("sepia", "hflip", "add_shape"):
        src_full, s_tok, o_tok = oracle_outs[name]
        if name == "add_shape":  # the object at 12 MP: the same scene drawn on the big photo
            kind = ks[name]
            params = kind.sample(big_photo, np.random.default_rng(args.seed))
            res = kind.render(big_photo, params)
            src_big = res.source
            s_tok = tok(fit_to_area(src_big, area, factor))
            o_tok = tok(fit_to_area(res.target, area, factor))
        else:
            src_big = big_photo
            s_tok = tok(fit_to_area(big_photo, area, factor))
            o_tok = tok(fit_to_area(ground_truth(ks[name], big_photo, {})[1], area, factor))
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            render_full(src_big, s_tok, o_tok)
            ts.append(time.perf_counter() - t0)
        times[name] = statistics.median(ts)
    print("render at 12 MP (4000x3000, 2 threads, median of 3): " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))

    for cat in ("global", "geometry", "object"):
        cr = [r for n, k in ks.items() if k.category == cat for r in rows[n]]
        mr = [r for r in cr if "psnr_render" in r]
        print(f"{cat}: psnr bicubic {avg([r['psnr_bicubic'] for r in mr]):.2f} render "
              f"{avg([r['psnr_render'] for r in mr]):.2f} (n={len(mr)}) oracle {avg([r['psnr_oracle'] for r in cr]):.2f} "
              f"(n={len(cr)})")
    gg = [n for n, k in ks.items() if k.category in ("global", "geometry")]
    sel = [r for n in gg for r in rows[n]]
    model_rows = [r for r in sel if "psnr_render" in r]
    print(f"fullres psnr_bicubic={avg([r['psnr_bicubic'] for r in model_rows]):.2f} "
          f"psnr_render={avg([r['psnr_render'] for r in model_rows]):.2f} "
          f"psnr_oracle={avg([r['psnr_oracle'] for r in sel]):.2f} "
          f"ssim_render={avg([r['ssim_render'] for r in model_rows]):.3f} "
          f"s_12mp={max(times.values()):.2f} n={len(model_rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
