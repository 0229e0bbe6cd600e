"""Speed and memory of the full-resolution render (``engine.render.render_full``) at 12 MP.

    python -m benchmarks.render_speed [--size 4000x3000] [--reps 3] [--threads 2]

The photo is scikit-image's coffee resized to ``--size``; the model's side is its model-resolution
picture (``image_io.fit_to_area``, no tokenizer: the render's own cost is measured, not the model's) and
two outputs drawn from it:

* ``global``: warmer and more contrast, a pointwise colour edit (the render's global colour model);
* ``local``: a spatially varying edit (warmer on the left, darker towards the bottom, brighter
  highlights on the right) that only the bilateral grid explains (the render's local colour model).

Each is rendered ``--reps`` times by the render as it is and by the render with the colour step of
before (``reference_apply_colour_full``: the bilateral grid sliced by a 3-D ``grid_sample`` over strips of
a million pixels, the global part as whole-picture Pillow passes), interleaved, in this process, on
``--threads`` torch threads. ``speedup``: the old local render's median time over the new one's.
``maxdiff``: the largest difference between the two results, in 8-bit levels. ``peak_mb``: how far one
local render raises the peak resident memory of a fresh process above what it used just before (Linux:
the kernel's peak, VmHWM, is reset through ``/proc/self/clear_refs`` first), ``peak_mb_old`` the same
with the old colour step; the result itself (4 bytes a pixel in Pillow) is part of it.

Last line: ``render_speed local_s_12mp=… global_s_12mp=… speedup=… global_speedup=… maxdiff=…
peak_mb=… peak_mb_old=…``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine import render
from engine.image_io import fit_to_area

AREA, FACTOR = 128 * 128, 8  # EARL-nano's picture


def photo(size: tuple[int, int]) -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.coffee()).resize(size, Image.Resampling.BICUBIC)


def outputs(src: Image.Image) -> dict[str, Image.Image]:
    """The two model outputs (model resolution) drawn from ``src``."""
    a = np.asarray(src, np.float32) / 255
    h, w = a.shape[:2]
    xx = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    warm = np.array([1.1, 1.0, 0.85], np.float32)
    glob = (a - 0.5) * 1.2 * warm + 0.5
    local = a * (1 + 0.3 * (1 - xx) * np.array([1, 0.2, -0.5], np.float32)) * (1 - 0.3 * yy)
    local = local + 0.15 * (a.mean(-1, keepdims=True) > 0.5) * xx
    return {k: Image.fromarray(np.clip(np.rint(v * 255), 0, 255).astype(np.uint8))
            for k, v in (("global", glob), ("local", local))}


def _reference_slice(grid: np.ndarray, g: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """The render's slicing before: one 3-D ``grid_sample`` over (x, y, luminance) for 12 coefficients."""
    nb, gy, gx = grid.shape[:3]
    coef = torch.from_numpy(np.ascontiguousarray(grid.reshape(nb, gy, gx, 12).transpose(3, 0, 1, 2)))[None]
    gt = torch.from_numpy(np.ascontiguousarray(g, dtype=np.float32))
    z = gt @ torch.from_numpy(render.LUMA)
    loc = torch.stack([torch.from_numpy(np.ascontiguousarray(px, dtype=np.float32)).clamp(0, 1) * 2 - 1,
                       torch.from_numpy(np.ascontiguousarray(py, dtype=np.float32)).clamp(0, 1) * 2 - 1,
                       z.clamp(0, 1) * 2 - 1], -1)
    a = F.grid_sample(coef, loc[None, None], mode="bilinear", padding_mode="border", align_corners=True)
    a = a[0, :, 0].reshape(3, 4, *g.shape[:2])
    out = (a[:, :3] * gt.permute(2, 0, 1)[None]).sum(1) + a[:, 3]
    return out.permute(1, 2, 0).clamp(0, 1).numpy()


def reference_apply_colour_full(im: Image.Image, colour, frame: tuple[float, float, float, float]) -> Image.Image:
    """The render's full-resolution colour step before: whole-picture Pillow passes for the global part,
    the bilateral grid sliced on float strips of a million pixels."""
    if colour.kind == "identity" and colour.grid is None:
        return im
    if not np.allclose(colour.matrix, np.hstack([np.eye(3), np.zeros((3, 1))]), atol=1e-6):
        m = colour.matrix.astype(np.float64)
        im = im.convert("RGB", tuple(float(v) for v in np.hstack([m[:, :3], m[:, 3:] * 255]).reshape(-1)))
    if colour.lut is not None and not np.array_equal(colour.lut, np.tile(np.arange(256, dtype=np.uint8), (3, 1))):
        im = im.point(colour.lut.reshape(-1).tolist())
    if colour.kind != "local" or colour.grid is None:
        return im
    w, h = im.size
    fx0, fy0, fx1, fy1 = frame
    xs = ((np.arange(w, dtype=np.float32) + 0.5 - fx0) / (fx1 - fx0)).astype(np.float32)
    rows = max(1, (1 << 20) // w)
    out = Image.new("RGB", im.size)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        strip = np.asarray(im.crop((0, y0, w, y1)), dtype=np.float32) / 255.0
        ys = ((np.arange(y0, y1, dtype=np.float32) + 0.5 - fy0) / (fy1 - fy0)).astype(np.float32)
        res = _reference_slice(colour.grid, strip, np.broadcast_to(xs, (y1 - y0, w)),
                               np.broadcast_to(ys[:, None], (y1 - y0, w)))
        out.paste(Image.fromarray(np.floor(res * 255 + 0.5).astype(np.uint8), "RGB"), (0, y0))
    return out


def old_render():
    """A context in which ``render_full`` uses the colour step of before."""
    return mock.patch.object(render, "_apply_colour_full", reference_apply_colour_full)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def peak_growth_mb(size: tuple[int, int], old: bool) -> int:
    """Peak resident memory one local render adds, in a fresh process."""
    code = (f"from benchmarks.render_speed import _child_peak; _child_peak({list(size)!r}, {old!r})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(json.loads(r.stdout.strip().splitlines()[-1])["grew_mb"])


def _rss_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _child_peak(size: list[int], old: bool) -> None:
    """Prints how far one local render raises resident memory above what was in use before it: the
    kernel's peak (VmHWM) is reset first, so earlier peaks (imports, building the photo) do not count."""
    im = photo(tuple(size))
    src = fit_to_area(im, AREA, FACTOR)
    out = outputs(src)["local"]
    render.render_full(im, src.resize((8, 8)), out.resize((8, 8)))  # first-call set-up outside the measure
    before = _rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    if old:
        with old_render():
            res = render.render_full(im, src, out)
    else:
        res = render.render_full(im, src, out)
    print(json.dumps({"grew_mb": (_rss_kb("VmHWM") - before) // 1024, "colour": res.provenance["colour"]}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.render_speed", description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="4000x3000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    torch.set_num_threads(args.threads)

    im = photo(size)
    src = fit_to_area(im, AREA, FACTOR)
    outs = outputs(src)
    times: dict[str, dict[str, list[float]]] = {k: {"new": [], "old": []} for k in outs}
    maxdiff = 0
    for kind, out in outs.items():
        for _ in range(args.reps):
            t_new, new = timed(lambda out=out: render.render_full(im, src, out))
            with old_render():
                t_old, old = timed(lambda out=out: render.render_full(im, src, out))
            times[kind]["new"].append(t_new)
            times[kind]["old"].append(t_old)
        colour = new.provenance["colour"]
        d = np.abs(np.asarray(new.image, np.int16) - np.asarray(old.image, np.int16))
        maxdiff = max(maxdiff, int(d.max()))
        print(f"{kind}: colour model {colour}, new {statistics.median(times[kind]['new']):.3f} s, "
              f"old {statistics.median(times[kind]['old']):.3f} s (median of {args.reps}); "
              f"{float((d > 0).mean()):.2e} of values differ, by at most {int(d.max())}", flush=True)
        if colour != kind:
            print(f"warning: the {kind} edit was rendered with the {colour} colour model")
    med = {k: {v: statistics.median(t) for v, t in d.items()} for k, d in times.items()}
    peak, peak_old = peak_growth_mb(size, False), peak_growth_mb(size, True)
    print(f"peak memory of one local render at {size[0]}x{size[1]}: new +{peak} MB, old +{peak_old} MB")
    mp = size[0] * size[1] / 1e6
    tag = "12mp" if round(mp) == 12 else f"{mp:.0f}mp"
    print(f"render_speed local_s_{tag}={med['local']['new']:.3f} global_s_{tag}={med['global']['new']:.3f} "
          f"speedup={med['local']['old'] / med['local']['new']:.2f} "
          f"global_speedup={med['global']['old'] / med['global']['new']:.2f} maxdiff={maxdiff} "
          f"peak_mb={peak} peak_mb_old={peak_old}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
