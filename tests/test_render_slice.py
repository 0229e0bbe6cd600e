"""engine.render's local colour model at full resolution: the bilateral grid sliced strip by strip, as the
trilinear interpolation it stands for, the same in any strips and on any number of threads, in bounded
memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import render
from engine.render import _apply_colour_full, _axis, _Colour, _grid_tensor, _slice_rows

REPO = Path(__file__).resolve().parent.parent


def _grid(seed: int = 0, shape: tuple[int, int, int] = (8, 7, 9)) -> np.ndarray:
    """A smooth random grid of affine maps near the identity: (bins, gy, gx, 3, 4)."""
    rng = np.random.default_rng(seed)
    ident = np.hstack([np.eye(3), np.zeros((3, 1))])
    return (ident + 0.15 * rng.standard_normal((*shape, 3, 4))).astype(np.float32)


def _picture(w: int, h: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)  # blocks, and extremes below
    a = np.array(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR))
    a[0, :3] = ((0, 0, 0), (255, 255, 255), (255, 0, 0))
    return a


def _trilinear(grid: np.ndarray, g8: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Reference slicing, pixel by pixel in float64: (h, w, 3) in 0..255 units, unclamped."""
    nb, gy, gx = grid.shape[:3]
    g = g8.astype(np.float64) / 255
    z = np.clip(g @ render.LUMA.astype(np.float64), 0, 1)
    out = np.zeros(g.shape)
    for y in range(g.shape[0]):
        for x in range(g.shape[1]):
            fz, fy, fx = z[y, x] * (nb - 1), ys[y] * (gy - 1), xs[x] * (gx - 1)
            iz, iy, ix = (min(int(np.floor(f)), n - 2) for f, n in ((fz, nb), (fy, gy), (fx, gx)))
            tz, ty, tx = fz - iz, fy - iy, fx - ix
            a = np.zeros((3, 4))
            for dz in (0, 1):
                for dy in (0, 1):
                    for dx in (0, 1):
                        wgt = (tz if dz else 1 - tz) * (ty if dy else 1 - ty) * (tx if dx else 1 - tx)
                        a += wgt * grid[iz + dz, iy + dy, ix + dx]
            out[y, x] = (a[:, :3] @ g[y, x] + a[:, 3]) * 255
    return out


def test_slicing_is_trilinear_interpolation_of_the_grid():
    grid = _grid()
    g8 = _picture(23, 17)
    # a frame that part of the picture lies outside of: those pixels take the frame's edge
    xs, ys = _axis(23, 2.0, 20.5), _axis(17, -1.0, 15.0)
    got = _slice_rows(_grid_tensor(grid), xs, ys, g8).permute(0, 2, 1).numpy()
    want = _trilinear(grid.astype(np.float64), g8, xs.numpy().astype(np.float64), ys.numpy().astype(np.float64))
    assert got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-2  # in 8-bit levels


def _local(grid: np.ndarray) -> _Colour:
    m = np.array([[0.9, 0.1, 0.0, 0.02], [0.0, 1.0, 0.0, 0.0], [0.05, 0.0, 0.9, -0.01]], np.float32)
    lut = np.tile(np.clip(np.arange(256) * 1.1 - 10, 0, 255).astype(np.uint8), (3, 1))
    return _Colour("local", matrix=m, lut=lut, grid=grid)


def test_full_resolution_colour_is_the_same_in_any_strips_and_on_any_threads(monkeypatch):
    colour = _local(_grid(2))
    im = Image.fromarray(_picture(61, 45, seed=3))
    frame = (3.0, 0.0, 58.0, 45.0)
    monkeypatch.setattr(render, "STRIP_PIXELS", 1 << 20)
    whole = np.asarray(_apply_colour_full(im, colour, frame))
    threads = torch.get_num_threads()
    try:
        for strip_px, n in ((61, 1), (61 * 7, 2), (61 * 7, 3)):
            monkeypatch.setattr(render, "STRIP_PIXELS", strip_px)
            torch.set_num_threads(n)
            assert np.array_equal(np.asarray(_apply_colour_full(im, colour, frame)), whole), (strip_px, n)
    finally:
        torch.set_num_threads(threads)


def test_threads_started_after_a_render_get_the_callers_torch_thread_count(monkeypatch):
    """The render's workers run torch on one thread each; threads started later must not inherit that."""
    import threading

    monkeypatch.setattr(render, "STRIP_PIXELS", 64 * 8)  # 8 strips: the workers run
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        _apply_colour_full(Image.fromarray(_picture(64, 64)), _local(_grid(6)), (0.0, 0.0, 64.0, 64.0))
        seen: list[int] = []
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert seen == [2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_full_resolution_colour_is_what_the_fit_measured():
    """At the model's own size the full-resolution step gives the prediction the colour fit was scored
    on, rounded to 8 bits: the render applies the model it measured (the grid alone here: the global
    part's Pillow matrix pass rounds a few values differently from ``global_low``)."""
    colour = _Colour("local", grid=_grid(4))
    a = _picture(40, 30, seed=5)
    low = colour.apply_low(a.astype(np.float32) / 255) * 255
    full = np.asarray(_apply_colour_full(Image.fromarray(a), colour, (0.0, 0.0, 40.0, 30.0))).astype(np.float32)
    assert np.abs(full - low).max() <= 0.5 + 1e-3


def test_a_local_colour_render_stays_in_bounded_memory():
    """A 12 MP render with the bilateral grid: the result is 4 bytes a pixel in Pillow (48 MB); a float32
    copy of the photo alone would be 144 MB. Peak resident memory is reset just before the render."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak")
    code = textwrap.dedent("""
        import json
        import numpy as np
        import skimage.data
        from PIL import Image
        from engine.image_io import fit_to_area
        from engine.render import render_full

        def kb(field):
            return next(int(v.split()[1]) for v in open("/proc/self/status") if v.startswith(field + ":"))

        photo = Image.fromarray(skimage.data.coffee()).resize((4000, 3000), Image.Resampling.BILINEAR)
        src = fit_to_area(photo, 128 * 128, 8)
        a = np.asarray(src, np.float32) / 255
        xx = np.linspace(0, 1, a.shape[1], dtype=np.float32)[None, :, None]
        yy = np.linspace(0, 1, a.shape[0], dtype=np.float32)[:, None, None]
        out = a * (1 + 0.3 * (1 - xx) * np.array([1, 0.2, -0.5], np.float32)) * (1 - 0.3 * yy)
        out = Image.fromarray(np.clip(np.rint(out * 255), 0, 255).astype(np.uint8))
        before = kb("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from here
        res = render_full(photo, src, out)
        print(json.dumps({"colour": res.provenance["colour"], "grew_mb": (kb("VmHWM") - before) // 1024}))
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["colour"] == "local", out
    assert out["grew_mb"] < 130, out
