"""Full-resolution render of a model output: the edit the model made, applied to the photo at its own size.

The model sees and draws a small picture (``image_io.fit_to_area``). ``render_full`` explains the model's
output in terms of the source *as the image tokenizer reproduces it* (``decode(encode(src))``, so the
tokenizer's own blur and colour error cancel) and carries that explanation over to the full-resolution
original:

1. **Geometry.** Among the 8 symmetries of the square (flips, 180°, quarter turns: a quarter turn of a
   non-square photo transposes its size) and crops/zooms (scale + offset), the transform that explains
   the output clearly better than "no change" is applied to the *original*: pixels moved, not upsampled
   (a zoom resamples the original's own pixels inside the window).
2. **Colour and tone.** A colour transform fitted at model resolution, applied at full resolution:
   "identity", "global" (an affine colour matrix followed by a per-channel tone curve: every pointwise
   colour edit of the suite is of this form, and it runs as two table/matrix passes in Pillow), or
   "local": bilateral-guided upsampling (Chen et al. 2016), an affine colour model per cell of a coarse
   grid over space × intensity, regularised towards the global model and smoothed across cells, sliced
   at full resolution strip by strip. The simplest model that explains the output is used.
3. **New content.** Where the output still differs from geometry + colour, the model's pixels are
   upsampled and blended in with a feathered mask; everywhere else the photo's own pixels stay, so
   outside the changed area the result is the (transformed, recoloured) original, exactly.

Honest by construction: an unchanged output gives back the original; an output that nothing explains
(noise, an unrelated picture) gives back the upsampled model output instead of a pretend edit. The
``provenance`` dict says which of these happened and with what fit.

Memory stays bounded for large photos: whole-image steps are Pillow operations on 8-bit images; the
colour step runs on strips of rows (8-bit, float32 only while a strip is sliced), a few at a time on
worker threads; other float work happens at model resolution.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from engine.image_io import DEFAULT_MAX_ASPECT, fit_box

__all__ = ["RenderResult", "Geometry", "D4", "render_full", "find_geometry", "apply_geometry"]

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_LUMA_GRID = torch.from_numpy(LUMA * (2 / 255))[None]  # 8-bit RGB to luminance in 0..2

# A transform must explain the output this much better (trimmed squared error ratio) than no change.
GEOMETRY_RATIO = 0.5
# Per-pixel error (RMS over channels, 0..1, after a 3x3 mean) above which the output shows new content.
CHANGE_THRESHOLD = 0.1
MIN_CHANGE_AREA = 32  # model pixels: smaller unexplained blobs are ignored
# When more than this fraction of the output is unexplained, the render is the upsampled output.
FALLBACK_FRACTION = 0.5
# black and white asked for: outputs whose colour (95th percentile of a pixel's largest channel offset from
# its grey) stays below this are greys with the tokenizer's tint, made neutral; above it, a failed edit
NEUTRAL_TINT = 0.15
# Colour models: a more complex one must cut the inlier RMS error by this factor and this much (0..1).
MODEL_GAIN = 0.75
MODEL_MARGIN = 1.0 / 255
# The bilateral grid must explain clearly more than the simpler model: it also fits the image tokenizer's
# own colour drift, which varies across the picture, so on pointwise edits and on flips and turns it
# lowers the fit error a little while making the full-resolution result worse (an exact turn inexact).
LOCAL_GAIN = 0.6
LOCAL_MARGIN = 2 * MODEL_MARGIN
# Bilateral grid: cells along the longer side / the shorter side, intensity bins, ridge towards global.
GRID_CELLS = 8
GRID_BINS = 8
GRID_RIDGE = 8.0
# ridges (per pixel, 0..1 units squared) on channel mixing tried by cross-validation, weakest first
COLOUR_RIDGES = (1e-6, 1e-4, 5e-4, 2e-3, 1e-2)
FIT_BLUR = 1.5  # Gaussian sigma (model pixels) of the copies the global colour model is fitted on
STRIP_PIXELS = 1 << 16  # pixels per strip when applying colour at full resolution (cache-sized work)

ZOOM_SCALES = (1.2, 1.4, 1.6, 1.8, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0)
ZOOM_STEPS = 9
SCORE_CAP = 0.01  # squared luminance error (0..1) at which a pixel counts as simply not matching  # window offsets tried per axis in the coarse zoom search


@dataclass(frozen=True)
class Geometry:
    """A rigid transform of the picture: a symmetry of the square, or a zoom window.

    Symmetries act as: transpose (swap rows and columns) if ``transpose``, then mirror left-right if
    ``flip_x``, then top-bottom if ``flip_y``. ``window`` (zoom only) is (left, top, right, bottom) in
    source pixels, scaled up to the whole frame.
    """

    name: str
    transpose: bool = False
    flip_x: bool = False
    flip_y: bool = False
    window: tuple[float, float, float, float] | None = None

    @property
    def is_identity(self) -> bool:
        return self.name == "identity"

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        if self.window is not None:
            d["window"] = [round(v, 3) for v in self.window]
        return d


D4: dict[str, Geometry] = {
    g.name: g
    for g in (
        Geometry("identity"),
        Geometry("hflip", flip_x=True),
        Geometry("vflip", flip_y=True),
        Geometry("rotate180", flip_x=True, flip_y=True),
        Geometry("transpose", transpose=True),
        Geometry("rotate90_cw", transpose=True, flip_x=True),
        Geometry("rotate90_ccw", transpose=True, flip_y=True),
        Geometry("transverse", transpose=True, flip_x=True, flip_y=True),
    )
}
_PIL_OP = {
    "hflip": Image.Transpose.FLIP_LEFT_RIGHT,
    "vflip": Image.Transpose.FLIP_TOP_BOTTOM,
    "rotate180": Image.Transpose.ROTATE_180,
    "transpose": Image.Transpose.TRANSPOSE,
    "rotate90_cw": Image.Transpose.ROTATE_270,  # Pillow's ROTATE_n turn counter-clockwise
    "rotate90_ccw": Image.Transpose.ROTATE_90,
    "transverse": Image.Transpose.TRANSVERSE,
}


@dataclass
class RenderResult:
    """The full-resolution image and what the render used to make it (``provenance``)."""

    image: Image.Image
    provenance: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- geometry


def _float(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _d4_array(a: np.ndarray, g: Geometry) -> np.ndarray:
    if g.transpose:
        a = a.swapaxes(0, 1)
    if g.flip_x:
        a = a[:, ::-1]
    if g.flip_y:
        a = a[::-1]
    return np.ascontiguousarray(a)


def _d4_box(box: tuple[float, float, float, float], size: tuple[int, int], g: Geometry
            ) -> tuple[float, float, float, float]:
    """Where the rectangle ``box`` of a ``size`` = (W, H) picture lands after the symmetry ``g``."""
    x0, y0, x1, y1 = box
    w, h = size
    if g.transpose:
        x0, y0, x1, y1, w, h = y0, x0, y1, x1, h, w
    if g.flip_x:
        x0, x1 = w - x1, w - x0
    if g.flip_y:
        y0, y1 = h - y1, h - y0
    return x0, y0, x1, y1


def apply_geometry(im: Image.Image, g: Geometry, size: tuple[int, int] | None = None) -> Image.Image:
    """``g`` applied to a picture: a symmetry moves pixels; a zoom resamples the window (bicubic) to
    ``size`` (default: the picture's size), as the suite's zoom edit does."""
    if g.window is not None:
        return im.resize(size or im.size, Image.Resampling.BICUBIC, box=g.window)
    if g.is_identity:
        return im
    return im.transpose(_PIL_OP[g.name])


def _luma(a: np.ndarray) -> np.ndarray:
    return a @ LUMA


def _fit_scores(cands: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Robust mean squared error of ``target`` ≈ α·cand + β fitted per candidate (lower is better).

    ``cands`` (N, P), ``target`` (P,). The gain/offset absorbs global tone and colour edits (an
    inverted or grayscale flip still matches); squared errors are capped (``SCORE_CAP``) so new content
    in part of the picture weighs no more than a mismatch.
    """
    c = cands - cands.mean(1, keepdims=True)
    t = target - target.mean()
    var = (c * c).mean(1)
    alpha = (c * t).mean(1) / np.maximum(var, 1e-8)
    r = t[None] - alpha[:, None] * c
    return np.minimum(r * r, SCORE_CAP).mean(1)


def _zoom_batch(y: torch.Tensor, windows: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear samples of the luminance ``y`` (h, w) in each window (N, 4) at ``out_hw``: (N, P)."""
    h, w = y.shape
    oh, ow = out_hw
    n = len(windows)
    win = torch.from_numpy(windows.astype(np.float32))
    jx = (torch.arange(ow, dtype=torch.float32) + 0.5) / ow
    jy = (torch.arange(oh, dtype=torch.float32) + 0.5) / oh
    xs = win[:, 0:1] + jx[None] * (win[:, 2:3] - win[:, 0:1])  # (N, ow) in pixel-edge coordinates
    ys = win[:, 1:2] + jy[None] * (win[:, 3:4] - win[:, 1:2])
    grid = torch.empty(n, oh, ow, 2)
    grid[..., 0] = (2 * xs / w - 1)[:, None, :]
    grid[..., 1] = (2 * ys / h - 1)[:, :, None]
    out = F.grid_sample(y[None, None].expand(n, 1, h, w), grid, mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out.reshape(n, -1).numpy()


def _zoom_windows(w: int, h: int, scales: np.ndarray, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    """Windows (left, top, right, bottom) for scales × offset fractions (0: left/top edge, 1: right/bottom)."""
    f = np.repeat(np.asarray(scales, np.float64), len(fx) * len(fy))
    u = np.tile(np.repeat(np.clip(fx, 0, 1), len(fy)), len(scales))
    v = np.tile(np.clip(fy, 0, 1), len(scales) * len(fx))
    cw, ch = w / f, h / f
    x0, y0 = u * (w - cw), v * (h - ch)
    return np.stack([x0, y0, x0 + cw, y0 + ch], 1)


def _shrink(y: np.ndarray, k: int) -> np.ndarray:
    h, w = y.shape
    hk, wk = max(1, h // k), max(1, w // k)
    return F.interpolate(torch.from_numpy(np.ascontiguousarray(y))[None, None], size=(hk, wk),
                         mode="area")[0, 0].numpy()


def _best_zoom(ys: np.ndarray, yo: np.ndarray) -> tuple[float, float, float, float]:
    """The zoom window that best explains ``yo`` from ``ys`` (same shape): a coarse search on quarter-size
    copies, then a finer one around the best few windows on half-size copies."""
    h, w = ys.shape
    # compared on blurred copies: the output went through the tokenizer once more than the source
    ys = ndimage.gaussian_filter(ys, 1.0, mode="nearest")
    yo = ndimage.gaussian_filter(yo, 1.0, mode="nearest")
    ys_t = torch.from_numpy(np.ascontiguousarray(ys))
    grid = np.linspace(0, 1, ZOOM_STEPS)
    wins = _zoom_windows(w, h, np.array(ZOOM_SCALES), grid, grid)
    yo4 = _shrink(yo, 4)
    scores = _fit_scores(_zoom_batch(ys_t, wins, yo4.shape), yo4.reshape(-1))
    step = 1.0 / (ZOOM_STEPS - 1)
    fine = []
    for i in np.argsort(scores)[:2]:
        x0, y0, x1, y1 = wins[i]
        f = w / (x1 - x0)
        u = x0 / max(w - (x1 - x0), 1e-9)
        v = y0 / max(h - (y1 - y0), 1e-9)
        du = np.linspace(-step / 2, step / 2, 3)
        fine.append(_zoom_windows(w, h, f * np.array([0.97, 1.0, 1.03]), u + du, v + du))
    wins = np.concatenate(fine)
    yo2 = _shrink(yo, 2)
    scores = _fit_scores(_zoom_batch(ys_t, wins, yo2.shape), yo2.reshape(-1))
    # last, at full model resolution: scale within 2 %, corners within a pixel
    x0, y0, x1, y1 = wins[int(np.argmin(scores))]
    cx, cy, cw = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0
    final = []
    for k in np.linspace(0.98, 1.02, 5):
        ww, wh = cw * k, cw * k * h / w
        for dx in (-1.0, -0.5, 0.0, 0.5, 1.0):
            for dy in (-1.0, -0.5, 0.0, 0.5, 1.0):
                ax = min(max(cx + dx - ww / 2, 0.0), w - ww)
                ay = min(max(cy + dy - wh / 2, 0.0), h - wh)
                final.append((ax, ay, ax + ww, ay + wh))
    # a round scale (the ones searched) with the same centre, when it fits about as well: the
    # tokenizer's blur at the picture's border biases the fit by a percent or two
    wins = np.array(final)
    scores = _fit_scores(_zoom_batch(ys_t, wins, (h, w)), yo.reshape(-1))
    i = int(np.argmin(scores))
    x0, y0, x1, y1 = wins[i]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    f = min(ZOOM_SCALES, key=lambda z: abs(z - w / (x1 - x0)))
    ww, wh = w / f, h / f
    ax, ay = min(max(cx - ww / 2, 0.0), w - ww), min(max(cy - wh / 2, 0.0), h - wh)
    snapped = np.array([[ax, ay, ax + ww, ay + wh]])
    s_snap = float(_fit_scores(_zoom_batch(ys_t, snapped, (h, w)), yo.reshape(-1))[0])
    if s_snap <= 1.1 * float(scores[i]) + 1e-7:
        return ax, ay, ax + ww, ay + wh
    return float(x0), float(y0), float(x1), float(y1)


def find_geometry(source: Image.Image, output: Image.Image) -> tuple[Geometry, dict[str, float]]:
    """The transform that best explains ``output`` from ``source`` (model resolution), and the scores.

    Scores are capped mean squared errors of luminance after a per-candidate gain/offset fit (lower is better).
    A transform other than identity is chosen only when it scores below ``GEOMETRY_RATIO`` times
    identity's; when the output has the transposed size, identity is impossible and the best quarter
    turn is chosen (the colour fit and the fallback decide whether it explains anything).
    """
    s, o = _float(source), _float(output)
    ys, yo = _luma(s), _luma(o)
    h, w = ys.shape
    names = [n for n, g in D4.items() if (_d4_array(ys, g).shape == yo.shape)]
    scores: dict[str, float] = {}
    if names:
        cands = np.stack([_d4_array(ys, D4[n]).reshape(-1) for n in names])
        scores = dict(zip(names, _fit_scores(cands, yo.reshape(-1)).tolist(), strict=True))
    window = None
    if yo.shape == ys.shape and min(h, w) >= 16:
        window = _best_zoom(ys, yo)
        zoomed = _luma(_float(apply_geometry(source, Geometry("zoom", window=window), output.size)))
        scores["zoom"] = float(_fit_scores(zoomed.reshape(1, -1), yo.reshape(-1))[0])
    if not scores:
        return D4["identity"], {}
    best = min(scores, key=scores.__getitem__)
    if "identity" in scores and best != "identity":
        if not scores[best] < GEOMETRY_RATIO * scores["identity"] - 1e-7:
            best = "identity"
    if best == "zoom":
        return Geometry("zoom", window=window), scores
    return D4[best], scores


# ----------------------------------------------------------------------------- colour


@dataclass
class _Colour:
    """A colour model: ``kind`` identity | global | local; ``matrix`` (3, 4) and ``lut`` (3, 256) for the
    global part, ``grid`` (bins, gy, gx, 3, 4) affine corrections on top of it for the local part."""

    kind: str = "identity"
    matrix: np.ndarray = field(default_factory=lambda: np.hstack([np.eye(3), np.zeros((3, 1))]).astype(np.float32))
    lut: np.ndarray | None = None
    grid: np.ndarray | None = None
    rmse: float = 0.0  # inlier RMS error at model resolution, 0..1

    def global_low(self, a: np.ndarray) -> np.ndarray:
        """The global part on a float picture, rounding as Pillow does at full resolution."""
        if self.kind == "identity":
            return a
        m = self.matrix
        g = np.clip(np.floor((a @ m[:, :3].T + m[:, 3]) * 255 + 0.5), 0, 255).astype(np.uint8)
        if self.lut is not None:
            g = np.stack([self.lut[c][g[..., c]] for c in range(3)], -1)
        return g.astype(np.float32) / 255.0

    def apply_low(self, a: np.ndarray) -> np.ndarray:
        g = self.global_low(a)
        if self.kind != "local" or self.grid is None:
            return g
        h, w = g.shape[:2]
        g8 = np.rint(g * 255).astype(np.uint8)  # the global part's values are 8-bit, as at full resolution
        out = _slice_rows(_grid_tensor(self.grid), _axis(w, 0, w), _axis(h, 0, h), g8)
        return out.permute(0, 2, 1).clamp(0, 255).div(255).numpy()


def _fit_affine(p: np.ndarray, o: np.ndarray, w: np.ndarray, blocks: np.ndarray | None = None) -> np.ndarray:
    """Weighted least squares o_c ≈ M_c · [p, 1] per channel (weights (P, 3)).

    Cross-channel terms are ridge-regularised towards the per-channel fit (o_c ≈ a_c p_c + b_c): in a
    photo with little colour the channels are nearly collinear, and the tokenizer's small colour errors
    would turn into large spurious channel mixing. The ridge's strength is chosen per channel by
    two-fold cross-validation over ``blocks`` (a 0/1 label per pixel, spatial blocks), so a colourful
    photo keeps the exact mixing of, say, a sepia edit.
    """
    x = np.hstack([p, np.ones((len(p), 1), np.float32)]).astype(np.float64)
    m = np.zeros((3, 4))
    for c in range(3):
        wc = w[:, c].astype(np.float64)
        best = None
        for lam in COLOUR_RIDGES if blocks is not None else (COLOUR_RIDGES[-1],):
            if blocks is None:
                sol = _ridge_solve(x, o[:, c], wc, c, lam)
                best = (0.0, sol)
                break
            err = 0.0
            for fold in (0, 1):
                train = wc * (blocks != fold)
                test = wc * (blocks == fold)
                sol = _ridge_solve(x, o[:, c], train, c, lam)
                err += float((test * (x @ sol - o[:, c]) ** 2).sum())
            if best is None or err < best[0] * (1 - 1e-3):
                best = (err, lam)
        lam = best[1] if blocks is not None else COLOUR_RIDGES[-1]
        m[c] = _ridge_solve(x, o[:, c], wc, c, lam)
    return m.astype(np.float32)


def _ridge_solve(x: np.ndarray, y: np.ndarray, wc: np.ndarray, c: int, lam: float) -> np.ndarray:
    """o_c ≈ x · m with the cross-channel coefficients pulled towards the per-channel fit by ``lam``."""
    n = max(float(wc.sum()), 1.0)
    xw = x * wc[:, None]
    xc = x[:, [c, 3]]
    a2 = (xc * wc[:, None]).T @ xc + 1e-6 * n * np.eye(2)
    gain, off = np.linalg.solve(a2, (xc * wc[:, None]).T @ y)
    prior = np.zeros(4)
    prior[c], prior[3] = gain, off
    reg = np.full(4, lam * n)
    reg[c] = reg[3] = 1e-6 * n
    return np.linalg.solve(xw.T @ x + np.diag(reg), xw.T @ y + reg * prior)


def _fit_lut(g: np.ndarray, o: np.ndarray, inl: np.ndarray) -> np.ndarray:
    """Per-channel tone curve (3, 256) uint8 mapping the affine output's 8-bit value to the target:
    mean target per level, pulled towards the identity where few pixels have that level, smoothed."""
    lut = np.empty((3, 256), np.uint8)
    levels = np.arange(256, dtype=np.float64)
    for c in range(3):
        idx = g[inl, c]
        n = np.bincount(idx, minlength=256).astype(np.float64)
        s = np.bincount(idx, weights=o[inl, c].astype(np.float64) * 255, minlength=256)
        n_s = ndimage.gaussian_filter1d(n, 3.0, mode="nearest")
        s_s = ndimage.gaussian_filter1d(s, 3.0, mode="nearest")
        k = 2.0
        curve = (s_s + k * levels) / (n_s + k)
        lut[c] = np.clip(np.floor(curve + 0.5), 0, 255).astype(np.uint8)
    return lut


def _tent(coord: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower vertex index and the weight of the upper one for coordinates in [0, 1] on n vertices."""
    x = np.clip(coord, 0, 1) * (n - 1)
    i = np.minimum(np.floor(x).astype(np.int64), n - 2) if n > 1 else np.zeros(x.shape, np.int64)
    return i, (x - i).astype(np.float32) if n > 1 else np.zeros(x.shape, np.float32)


def _grid_shape(h: int, w: int) -> tuple[int, int, int]:
    long_, short = max(h, w), min(h, w)
    n_short = max(2, round(GRID_CELLS * short / long_) + 1)
    gy, gx = (GRID_CELLS + 1, n_short) if h >= w else (n_short, GRID_CELLS + 1)
    return GRID_BINS, gy, gx


def _fit_grid(g: np.ndarray, o: np.ndarray, inl: np.ndarray) -> np.ndarray:
    """Bilateral grid of affine corrections A_v with o ≈ A(x, y, luma(g)) · [g, 1] (Chen et al. 2016):
    per-vertex normal equations splatted with trilinear weights, a ridge towards the identity correction
    (so sparsely covered cells follow the global model) and a smoothing pass across neighbouring cells."""
    h, w = g.shape[:2]
    nb, gy, gx = _grid_shape(h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    px = ((xx + 0.5) / w)[inl]
    py = ((yy + 0.5) / h)[inl]
    gi = g[inl]
    z = _luma(gi)
    x = np.hstack([gi, np.ones((len(gi), 1), np.float32)])
    y = o[inl]
    ix, tx = _tent(px, gx)
    iy, ty = _tent(py, gy)
    iz, tz = _tent(z, nb)
    nv = nb * gy * gx
    xtx = np.zeros((nv, 16))
    xty = np.zeros((nv, 12))
    outer_xx = (x[:, :, None] * x[:, None, :]).reshape(-1, 16)
    outer_xy = (x[:, :, None] * y[:, None, :]).reshape(-1, 12)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                wgt = ((tz if dz else 1 - tz) * (ty if dy else 1 - ty) * (tx if dx else 1 - tx)).astype(np.float64)
                v = ((iz + dz) * gy + (iy + dy)) * gx + (ix + dx)
                for k in range(16):
                    xtx[:, k] += np.bincount(v, weights=wgt * outer_xx[:, k], minlength=nv)
                for k in range(12):
                    xty[:, k] += np.bincount(v, weights=wgt * outer_xy[:, k], minlength=nv)
    ident = np.vstack([np.eye(3), np.zeros((1, 3))])  # (4, 3): o = x · ident
    a = xtx.reshape(nv, 4, 4) + GRID_RIDGE * np.eye(4)
    b = xty.reshape(nv, 4, 3) + GRID_RIDGE * ident
    coef = np.linalg.solve(a, b)  # (nv, 4, 3)
    coef = coef.transpose(0, 2, 1).reshape(nb, gy, gx, 12)
    coef = ndimage.uniform_filter(coef, size=(3, 3, 3, 1), mode="nearest")
    return coef.reshape(nb, gy, gx, 3, 4).astype(np.float32)


def _grid_tensor(grid: np.ndarray) -> torch.Tensor:
    """The grid laid out for slicing row by row: (gy, 12, bins, gx), offsets in 0..255 units (the picture's)."""
    nb, gy, gx = grid.shape[:3]
    g = grid.astype(np.float32, copy=True)
    g[..., 3] *= 255
    return torch.from_numpy(np.ascontiguousarray(g.reshape(nb, gy, gx, 12).transpose(1, 3, 0, 2)))


def _axis(n: int, lo: float, hi: float) -> torch.Tensor:
    """Where the centres of ``n`` pixels lie in the span [lo, hi) of the frame, as fractions in [0, 1]
    (pixels outside the frame take its edge)."""
    return ((torch.arange(n, dtype=torch.float32) + 0.5 - lo) / (hi - lo)).clamp(0, 1)


def _slice_rows(coef: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, g8: np.ndarray) -> torch.Tensor:
    """The grid's affine maps applied to rows of a picture: (r, 3, w) float32 in 0..255 units, unclamped.

    ``coef`` from ``_grid_tensor``; ``g8`` (r, w, 3) uint8; ``xs`` (w,) and ``ys`` (r,) the pixels'
    frame coordinates in [0, 1]. Trilinear slicing over (x, y, luminance) is separable: the rows' own
    spatial position is interpolated first, on the coarse grid, which leaves a bilinear lookup over
    (x, luminance) per pixel, done by ``grid_sample`` in 2-D.
    """
    r, w = g8.shape[:2]
    gy = coef.shape[0]
    fy = ys * (gy - 1)
    i0 = fy.floor().clamp(max=gy - 2).long()
    rows = torch.lerp(coef[i0], coef[i0 + 1], (fy - i0)[:, None, None, None])  # (r, 12, bins, gx)
    g = torch.from_numpy(g8).permute(0, 2, 1).float().contiguous()  # (r, 3, w)
    loc = torch.empty(r, 1, w, 2)
    loc[..., 0] = xs * 2 - 1
    # luminance in [-1, 1]; clamped so that the zero padding (faster than "border") is never reached
    loc[:, 0, :, 1] = torch.matmul(_LUMA_GRID, g)[:, 0].sub_(1).clamp_(-1, 1)
    a = F.grid_sample(rows, loc, mode="bilinear", padding_mode="zeros", align_corners=True).view(r, 3, 4, w)
    out = a[:, :, 3].clone()
    for k in range(3):
        out.addcmul_(a[:, :, k], g[:, k : k + 1])
    return out


def _rms(d: np.ndarray) -> np.ndarray:
    return np.sqrt((d * d).mean(-1))


def _fit_colour(p: np.ndarray, o: np.ndarray) -> tuple[_Colour, np.ndarray, dict[str, float]]:
    """The simplest colour model explaining ``o`` from ``p`` (same shape), its inlier mask and the inlier
    RMS errors of every model tried."""
    h, w = p.shape[:2]
    pf, of = p.reshape(-1, 3), o.reshape(-1, 3)
    # The global model is fitted on low-passed copies: an affine colour map commutes with blurring, and
    # the image tokenizer's errors (texture, edges) are mostly high frequencies.
    pb = ndimage.gaussian_filter(p, (FIT_BLUR, FIT_BLUR, 0), mode="nearest").reshape(-1, 3)
    ob = ndimage.gaussian_filter(o, (FIT_BLUR, FIT_BLUR, 0), mode="nearest").reshape(-1, 3)
    inl = np.ones(h * w, bool)
    # targets at 0 or 255 (and their blurred neighbourhood) say only "at least / at most": left to the curve
    clip = (o <= 2 / 255) | (o >= 253 / 255)
    r = int(math.ceil(2 * FIT_BLUR))
    unclipped = ~ndimage.maximum_filter(clip, size=(2 * r + 1, 2 * r + 1, 1)).reshape(-1, 3)
    yy, xx = np.mgrid[0:h, 0:w]
    blocks = (((yy // 16) + (xx // 16)) % 2).reshape(-1)
    glob = _Colour("global")
    for _ in range(3):
        # fit the matrix where the target is not clipped (the tone curve learns the clipping)
        wts = (inl[:, None] & unclipped).astype(np.float32)
        if wts.sum() < 12:
            wts = np.repeat(inl[:, None], 3, 1).astype(np.float32)
        glob.matrix = _fit_affine(pb, ob, wts, blocks)
        glob.lut = None
        g8 = np.clip(np.floor((pf @ glob.matrix[:, :3].T + glob.matrix[:, 3]) * 255 + 0.5), 0, 255).astype(np.uint8)
        glob.lut = _fit_lut(g8, of, inl)
        err = _rms(of - glob.global_low(pf))
        thr = max(CHANGE_THRESHOLD, 3.0 * float(np.median(err[inl])))
        new = err < thr
        if new.sum() < max(16, 0.05 * len(new)):
            break
        inl = new
    gl = glob.global_low(pf)
    errors = {"identity": float(np.sqrt((_rms(of - pf)[inl] ** 2).mean())),
              "global": float(np.sqrt((_rms(of - gl)[inl] ** 2).mean()))}
    best = _Colour("identity", rmse=errors["identity"])
    if errors["global"] < MODEL_GAIN * errors["identity"] and errors["identity"] - errors["global"] > MODEL_MARGIN:
        best = glob
        best.rmse = errors["global"]
    if min(h, w) >= 8 and inl.sum() >= 64:
        base = best.global_low(pf).reshape(h, w, 3)
        local = _Colour("local", matrix=best.matrix, lut=best.lut if best.kind == "global" else None)
        if best.kind == "identity":
            local.matrix = _Colour().matrix
        local.grid = _fit_grid(base, o, inl.reshape(h, w))
        errors["local"] = float(np.sqrt((_rms(of - local.apply_low(p).reshape(-1, 3))[inl] ** 2).mean()))
        if errors["local"] < LOCAL_GAIN * best.rmse and best.rmse - errors["local"] > LOCAL_MARGIN:
            local.rmse = errors["local"]
            best = local
    return best, inl.reshape(h, w), errors


# ----------------------------------------------------------------------------- new content


def _changed_mask(pred: np.ndarray, o: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(changed, alpha) at model resolution: pixels the prediction does not explain, and a feathered
    blending weight in [0, 1] that is exactly 0 away from them."""
    err = ndimage.uniform_filter(_rms(o - pred), size=5, mode="nearest")
    changed = err > CHANGE_THRESHOLD
    labels, n = ndimage.label(changed)
    if n:  # specks are the image tokenizer's own errors, not content
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        changed = (sizes >= MIN_CHANGE_AREA)[labels] & changed
    if not changed.any():
        return changed, np.zeros(changed.shape, np.float32)
    grown = ndimage.binary_dilation(changed, structure=np.ones((3, 3), bool))
    alpha = ndimage.gaussian_filter(grown.astype(np.float32), 1.0, mode="constant") * 1.6
    alpha = np.clip(alpha, 0, 1)
    alpha[alpha < 0.02] = 0.0
    return changed, alpha


def _blend(base: Image.Image, output: Image.Image, alpha: np.ndarray,
           frame: tuple[float, float, float, float]) -> Image.Image:
    """``output``'s pixels, upsampled onto ``frame`` of ``base``, blended in where ``alpha`` > 0 only."""
    ys, xs = np.nonzero(alpha > 0)
    if len(xs) == 0:
        return base
    oh, ow = alpha.shape
    fx0, fy0, fx1, fy1 = frame
    sx, sy = (fx1 - fx0) / ow, (fy1 - fy0) / oh
    # the region of base covered by the alpha's bounding box (one model pixel of margin for the filters)
    mx0, my0 = max(0, xs.min() - 1), max(0, ys.min() - 1)
    mx1, my1 = min(ow, xs.max() + 2), min(oh, ys.max() + 2)
    rx0 = max(0, math.ceil(fx0 - 1e-6), math.floor(fx0 + mx0 * sx))
    ry0 = max(0, math.ceil(fy0 - 1e-6), math.floor(fy0 + my0 * sy))
    rx1 = min(base.width, math.floor(fx1 + 1e-6), math.ceil(fx0 + mx1 * sx))
    ry1 = min(base.height, math.floor(fy1 + 1e-6), math.ceil(fy0 + my1 * sy))
    if rx1 <= rx0 or ry1 <= ry0:
        return base
    size = (rx1 - rx0, ry1 - ry0)
    src_box = (min(max((rx0 - fx0) / sx, 0.0), ow), min(max((ry0 - fy0) / sy, 0.0), oh),
               min(max((rx1 - fx0) / sx, 0.0), ow), min(max((ry1 - fy0) / sy, 0.0), oh))
    up = output.resize(size, Image.Resampling.BICUBIC, box=src_box)
    a8 = Image.fromarray(np.clip(np.rint(alpha * 255), 0, 255).astype(np.uint8), "L")
    mask = a8.resize(size, Image.Resampling.BILINEAR, box=src_box)
    region = base.crop((rx0, ry0, rx1, ry1))
    base.paste(Image.composite(up, region, mask), (rx0, ry0))
    return base


# ----------------------------------------------------------------------------- full resolution


class _FullColour:
    """A colour model prepared for strips of rows of a full-resolution picture: the global part as
    Pillow's matrix and table passes, the bilateral grid (if any) sliced on each strip's 8-bit result."""

    def __init__(self, colour: _Colour, size: tuple[int, int], frame: tuple[float, float, float, float]):
        self.matrix: tuple[float, ...] | None = None
        self.lut: list[int] | None = None
        self.grid: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if colour.kind == "identity" and colour.grid is None:
            return
        if not np.allclose(colour.matrix, _Colour().matrix, atol=1e-6):
            m = colour.matrix.astype(np.float64)
            self.matrix = tuple(float(v) for v in np.hstack([m[:, :3], m[:, 3:] * 255]).reshape(-1))
        if colour.lut is not None and not np.array_equal(colour.lut, np.tile(np.arange(256, dtype=np.uint8), (3, 1))):
            self.lut = colour.lut.reshape(-1).tolist()
        if colour.kind == "local" and colour.grid is not None:
            w, h = size
            fx0, fy0, fx1, fy1 = frame
            self.grid = (_grid_tensor(colour.grid), _axis(w, fx0, fx1), _axis(h, fy0, fy1))

    @property
    def is_identity(self) -> bool:
        return self.matrix is None and self.lut is None and self.grid is None

    def __call__(self, strip: Image.Image, y0: int) -> Image.Image:
        """The model on ``strip``, the picture's rows from ``y0`` on."""
        if self.matrix is not None:
            strip = strip.convert("RGB", self.matrix)
        if self.lut is not None:
            strip = strip.point(self.lut)
        if self.grid is None:
            return strip
        coef, xs, ys = self.grid
        out = _slice_rows(coef, xs, ys[y0 : y0 + strip.height], np.array(strip))
        out = out.add_(0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 1).contiguous()
        return Image.fromarray(out.numpy(), "RGB")


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch on ``n`` threads in this thread for the duration, then as the caller had it.

    The model-resolution steps work on pictures of a few thousand pixels: split across threads, each
    operation costs more in synchronisation than it saves, the more so when the cores are busy.
    """
    old = torch.get_num_threads()
    if old == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)  # also what threads started later begin with


def _map_strips(im: Image.Image, fn: Callable[[Image.Image, int], Image.Image], rows: int) -> Image.Image:
    """``fn(strip, y0)`` on every strip of ``rows`` rows of ``im``, pasted into a new picture.

    Strips go to as many worker threads as the caller's torch thread count, each running torch on a
    single thread: independent strips keep every core busy without OpenMP's per-operation
    synchronisation, which stalls badly when the cores are shared with other work. At most two strips
    per worker are in flight, so memory stays bounded by the strip size, not the picture's.
    """
    im.load()  # the workers only read it
    w, h = im.size
    out = Image.new("RGB", im.size)
    starts = range(0, h, rows)
    workers = max(1, min(torch.get_num_threads(), len(starts)))

    def one(y0: int) -> Image.Image:
        return fn(im.crop((0, y0, w, min(h, y0 + rows))), y0)

    if workers == 1:
        for y0 in starts:
            out.paste(one(y0), (0, y0))
        return out
    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="earl-render", initializer=torch.set_num_threads,
                                initargs=(1,)) as pool:
            pending: deque[tuple[int, Future]] = deque()
            for y0 in starts:
                pending.append((y0, pool.submit(one, y0)))
                if len(pending) >= 2 * workers:
                    y, fut = pending.popleft()
                    out.paste(fut.result(), (0, y))
            for y, fut in pending:
                out.paste(fut.result(), (0, y))
    finally:
        # a thread's set_num_threads also sets the count threads started later begin with: put it back
        torch.set_num_threads(threads)
    return out


def _apply_colour_full(im: Image.Image, colour: _Colour, frame: tuple[float, float, float, float]) -> Image.Image:
    """The colour model on a full-resolution picture, strip by strip (8-bit strips, float32 only for
    the strips being sliced); the picture itself when the model changes nothing."""
    prepared = _FullColour(colour, im.size, frame)
    if prepared.is_identity:
        return im
    return _map_strips(im, prepared, max(1, STRIP_PIXELS // im.width))


def _zoom_full(original: Image.Image, box: tuple[float, float, float, float], model_size: tuple[int, int],
               window: tuple[float, float, float, float]) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """A zoom on the original, at the original's size: the model's window (source pixels) mapped onto
    the photo, widened to the photo's aspect ratio (kept inside it) and resampled from the photo's own
    pixels. Returns the image and where the model's window lies in it."""
    W, H = original.size
    bx0, by0, bx1, by1 = box
    kx, ky = (bx1 - bx0) / model_size[0], (by1 - by0) / model_size[1]
    x0, y0, x1, y1 = bx0 + window[0] * kx, by0 + window[1] * ky, bx0 + window[2] * kx, by0 + window[3] * ky
    cx, cy, ww, wh = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if ww / wh < W / H:
        ww = min(W, wh * W / H)
    else:
        wh = min(H, ww * H / W)
    ex0 = min(max(cx - ww / 2, 0.0), W - ww)
    ey0 = min(max(cy - wh / 2, 0.0), H - wh)
    img = original.resize((W, H), Image.Resampling.BICUBIC, box=(ex0, ey0, ex0 + ww, ey0 + wh))
    sx, sy = W / ww, H / wh
    return img, ((x0 - ex0) * sx, (y0 - ey0) * sy, (x1 - ex0) * sx, (y1 - ey0) * sy)


def render_full(original: Image.Image, source_model: Image.Image, output_model: Image.Image,
                max_aspect: float = DEFAULT_MAX_ASPECT, new_content: bool = True, neutral: bool = False
                ) -> RenderResult:
    """Render ``output_model`` at the resolution of ``original``.

    ``original``: the photo at full resolution, RGB, EXIF orientation applied (``image_io.load_image``).
    ``source_model``: the model's source as the image tokenizer reproduces it (``decode(encode(src))``)
    where ``src = fit_to_area(original, …)`` (its size says which part of the original the model saw,
    ``image_io.fit_box``). ``output_model``: the model's output, the source's size or its transpose.
    ``max_aspect`` must be the one ``fit_to_area`` used. ``new_content``: False when the instruction asks
    for colour, tone and geometric edits only (``engine.understanding.Reading.new_content``); then what the
    geometry and colour steps leave unexplained is the model's mistake, not an object, and none of the model's
    own pixels are blended in (the provenance's ``content_left_out`` says how much of the picture that was).
    ``neutral``: the request ends in black and white (``Reading.neutral``); when the model's output is grey
    but for a faint tint (its image tokenizer's greys are not quite neutral), the result keeps the
    brightness the model chose and none of the tint. A colourful output is left as the model drew it.
    """
    t0 = time.perf_counter()
    original = original.convert("RGB") if original.mode != "RGB" else original
    source_model = source_model.convert("RGB")
    output_model = output_model.convert("RGB")
    sw, sh = source_model.size
    ow, oh = output_model.size
    box = fit_box(original.width, original.height, (sw, sh), max_aspect)
    prov: dict[str, Any] = {"size": list(original.size), "model_size": [ow, oh]}

    with _torch_threads(1):
        geo, scores = find_geometry(source_model, output_model)
    prov["geometry_scores"] = {k: round(v, 6) for k, v in scores.items()}
    if geo.window is not None:
        pred_geo = apply_geometry(source_model, geo, (ow, oh))
    else:
        pred_geo = apply_geometry(source_model, geo)
    p, o = _float(pred_geo), _float(output_model)
    if p.shape != o.shape:  # an output of neither the source's size nor its transpose
        return _fallback(output_model, box, prov, "output size matches no transform of the source", t0)
    with _torch_threads(1):
        colour, inliers, errors = _fit_colour(p, o)
        pred = colour.apply_low(p)
    changed, alpha = _changed_mask(pred, o)
    frac = float(changed.mean())
    prov.update(transform=geo.as_dict(), colour=colour.kind, colour_fit_rmse=round(colour.rmse * 255, 3),
                colour_errors={k: round(v * 255, 3) for k, v in errors.items()}, changed_fraction=round(frac, 4))
    if frac > FALLBACK_FRACTION:
        return _fallback(output_model, box, prov, f"{frac:.0%} of the output is not explained by the source", t0)

    # geometry on the original: the model frame (where the model's picture lies) moves with it
    bx0, by0, bx1, by1 = box
    if geo.window is not None:
        img, frame = _zoom_full(original, box, (sw, sh), geo.window)
    else:
        frame = _d4_box(box, original.size, geo)
    # one full-size intermediate at a time: the transformed copy is dropped as soon as it is recoloured
    img = _apply_colour_full(img if geo.window is not None else apply_geometry(original, geo), colour, frame)
    if alpha.any() and not new_content:
        prov["content_left_out"] = round(frac, 4)
        alpha = np.zeros_like(alpha)
    if alpha.any():
        if img is original:
            img = original.copy()
        img = _blend(img, output_model, alpha, frame)
    unchanged = geo.is_identity and colour.kind == "identity" and not alpha.any()
    if neutral and not unchanged:
        tint = float(np.percentile(np.abs(o - o.mean(axis=-1, keepdims=True)).max(axis=-1), 95))
        prov["tint"] = round(tint * 255, 1)
        if tint < NEUTRAL_TINT:  # a grey picture with a tint, not a colour picture the model failed to grey
            img = img.convert("L").convert("RGB")
            prov["neutral"] = True
    if img is original:
        img = original.copy()
    prov["method"] = "unchanged" if unchanged else ("geometry+colour+content" if alpha.any() else "geometry+colour")
    prov["seconds"] = round(time.perf_counter() - t0, 4)
    return RenderResult(img, prov)


def _fallback(output: Image.Image, box: tuple[float, float, float, float], prov: dict[str, Any], why: str,
              t0: float) -> RenderResult:
    """The model output upsampled to the size of the part of the photo it stands for."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    src_landscape = bw >= bh
    if (output.width >= output.height) != src_landscape and output.width != output.height:
        bw, bh = bh, bw
    size = (max(1, round(bw)), max(1, round(bh)))
    prov.update(method="upsampled", reason=why, seconds=round(time.perf_counter() - t0, 4))
    return RenderResult(output.resize(size, Image.Resampling.BICUBIC), prov)
