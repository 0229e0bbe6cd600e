"""Programmatic verifier for the synthetic editing suite — VIEScore-shaped, 0–10, on pixels.

``score(source, output, target, mask) -> VerifierScore(success, overedit, sc, pq, overall)``

All images are float RGB in [0, 1]; the output is resized to the target's size if it differs, and one
of the other orientation (landscape for a portrait target, as a quarter turn that kept the photo's
shape) fails the edit: success 0. The mask is the edit region in the target's frame (True = may change);
``None`` means the whole image. Cells are the 8×8-pixel token
cells. ``P(x)`` maps RGB to luminance + two opponent chroma axes (Y, 1.5·(R−G), 1.5·((R+G)/2−B)) and
blurs with a Gaussian of σ = ``SIGMA`` = 1.5 px: the VQ tokenizer loses fine detail, so the comparison is
made after removing it (a perfect edit decoded through a 22–24 dB VQ must still pass), while colour
mistakes count extra. ``rms_R(a, b)`` is the root-mean-square difference over the three channels of
the pixels in region R. Constants: TAU = 0.04, ABS_SCALE = 0.12, COVER_FRAC = 0.3, TAU_CELL = 0.10, BETA = 0.02.

Edit success (the edit region matches the ground truth)::

    tau = TAU + DETAIL_K · rms_M(Q(target), P(target))   # Q: opponent space without blur
    dO = rms_M(P(output), P(target)),  dS = rms_M(P(source), P(target))
    relative = clip(1 − max(0, dO − tau) / max(dS − tau, dS / 3), 0, 1)
    absolute = clip(1 − max(0, dO − tau) / ABS_SCALE, 0, 1)
    coverage = clip(1 − frac{cells c ⊂ M : rms_c(P(output), P(target)) > tau + ABS_SCALE} / COVER_FRAC, 0, 1)
    success  = 10 · min(relative, absolute, coverage)      # computed for each connected part of M; the minimum

The tolerance grows with the fine detail of the ground truth in the region (DETAIL_K = 0.25): a VQ
cannot reproduce sharp object edges, and a small region with a hard-edged object would otherwise
fail on reconstruction error alone. M is split into its connected parts (8-connected token cells;
parts under 2 cells merged into the largest) and the worst part counts, so moving an object to the
wrong place (old spot right, new spot wrong) cannot pass on the average. ``relative`` is 1 within ``tau`` of the ground truth and 0 when the output is no closer to it than
the unedited source; ``absolute`` stops a result that is "most of the way" but visibly different (sepia
for grayscale, an object half-way to its new spot) from scoring high. (If dS = 0: success = 10·absolute.)

No over-editing (outside the region the output matches the source)::

    for each cell c outside M (less than half of its pixels in M):
        excess_c = max(0, rms_c(P(output), P(source)) − TAU_CELL)
    change  = Σ_{cells c in M} rms_c(P(source), P(target))       # size of the requested edit
    overedit = 10 · clip(1 − Σ excess_c / max(change, BETA · n_cells), 0, 1)

so changing as much outside the region as the edit changes inside it scores 0; per-cell reconstruction
noise below ``TAU_CELL`` is free. With no cells outside the mask (global edits) overedit = 10.

Perceptual quality (no neural net; artefacts of the output relative to the ground truth, on luminance
Y without blur)::

    sharp  = (mean|∇Y_out| + 0.01) / (mean|∇Y_target| + 0.01)          (Sobel gradient magnitude)
    noise  = mean(max(0, |Y_out − G1(Y_out)| − |Y_target − G1(Y_target)|))    (G1: Gaussian σ = 1;
             high-frequency energy the ground truth does not have at that pixel)
    block  = B(out) − B(target),  B(x) = mean |step across 8-px cell borders| / mean |step inside cells|
    p_blur  = clip((0.6 − sharp) / 0.3, 0, 1)
    p_noise = clip((noise − 0.012) / 0.03, 0, 1)
    p_block = clip((block − 0.5) / 1.0, 0, 1)
    pq = 10 · (1 − p_blur) · (1 − p_noise) · (1 − p_block)

Combined (as VIEScore): ``sc = min(success, overedit)``, ``overall = sqrt(sc · pq)``.

Constants were calibrated with ``python -m training.data.suite sanity``: the ground truth scores 10, the
ground truth degraded like a 22–24 dB VQ reconstruction (blur + JPEG + noise, see
``vq_like_degrade``) scores ≥ 8, the unedited source and wrong edits score low.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, label, sobel

SIGMA = 1.5
TAU = 0.04
ABS_SCALE = 0.12
DETAIL_K = 0.25
COVER_FRAC = 0.3
TAU_CELL = 0.10
BETA = 0.02
CELL = 8


@dataclass
class VerifierScore:
    success: float
    overedit: float
    sc: float
    pq: float
    overall: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()}


def _arr(x, size: tuple[int, int] | None = None) -> np.ndarray:
    if isinstance(x, np.ndarray) and x.dtype != np.uint8:
        a = x.astype(np.float32)
        if size is not None and a.shape[1::-1] != size:
            x = Image.fromarray(np.clip(np.round(a * 255), 0, 255).astype(np.uint8))
        else:
            return a
    img = x if isinstance(x, Image.Image) else Image.fromarray(np.asarray(x))
    img = img.convert("RGB")
    if size is not None and img.size != size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _mask(m, shape: tuple[int, int]) -> np.ndarray:
    if m is None:
        return np.ones(shape, bool)
    if isinstance(m, Image.Image):
        m = np.asarray(m.convert("L")) > 127
    m = np.asarray(m)
    if m.dtype != bool:
        m = m > (127 if m.dtype == np.uint8 else 0.5)
    if m.shape != shape:
        raise ValueError(f"mask shape {m.shape} does not match image shape {shape}")
    return m


# luminance + two opponent chroma axes; chroma counts CHROMA_WEIGHT times as much (colour mistakes such
# as sepia-for-grayscale are visible even when small in RGB; the VQ's errors are mostly in luminance detail)
CHROMA_WEIGHT = 1.5
_OPP = np.array([[0.299, 0.587, 0.114], [1.0, -1.0, 0.0], [0.5, 0.5, -1.0]], np.float32)
_OPP[1:] *= CHROMA_WEIGHT


def _blur(a: np.ndarray) -> np.ndarray:
    """P(x): opponent colour space, then a Gaussian blur of σ = SIGMA px."""
    return gaussian_filter(a @ _OPP.T, sigma=(SIGMA, SIGMA, 0), mode="reflect")


def _rms(d: np.ndarray, region: np.ndarray) -> float:
    if not region.any():
        return 0.0
    return float(np.sqrt((d[region] ** 2).mean()))


def _cells(d2: np.ndarray, cell: int = CELL) -> np.ndarray:
    """Per-cell mean of a (H, W) array (partial cells at the border are dropped)."""
    H, W = d2.shape
    gh, gw = H // cell, W // cell
    return d2[: gh * cell, : gw * cell].reshape(gh, cell, gw, cell).mean(axis=(1, 3))


def success_score(S: np.ndarray, Out: np.ndarray, T: np.ndarray, M: np.ndarray, detail: float = 0.0) -> float:
    """Blurred inputs; ``detail`` = rms_M of the target's fine detail (what the blur removed)."""
    tau = TAU + DETAIL_K * detail
    dO = _rms(Out - T, M)
    dS = _rms(S - T, M)
    absolute = float(np.clip(1 - max(0.0, dO - tau) / ABS_SCALE, 0, 1))
    # coverage: share of the region's token cells that are far off (so a half-done edit cannot
    # pass on the average)
    inside = _cells(M.astype(np.float32)) >= 0.5
    if inside.any():
        e = np.sqrt(_cells(((Out - T) ** 2).mean(axis=2)))[inside]
        absolute = min(absolute, float(np.clip(1 - (e > tau + ABS_SCALE).mean() / COVER_FRAC, 0, 1)))
    if dS < 1e-6:
        return 10.0 * absolute
    relative = float(np.clip(1 - max(0.0, dO - tau) / max(dS - tau, dS / 3), 0, 1))
    return 10.0 * min(relative, absolute)


def regions(M: np.ndarray, cell: int = CELL) -> list[np.ndarray]:
    """The edit region split into its connected parts (8-connected in token cells), e.g. the old and
    the new place of a moved object. Parts under 2 cells are merged into the largest part."""
    H, W = M.shape
    gh, gw = -(-H // cell), -(-W // cell)
    pad = np.zeros((gh * cell, gw * cell), bool)
    pad[:H, :W] = M
    cells = pad.reshape(gh, cell, gw, cell).any(axis=(1, 3))
    lab, n = label(cells, structure=np.ones((3, 3)))
    if n <= 1:
        return [M]
    sizes = np.bincount(lab.ravel())[1:]
    big = [i + 1 for i in range(n) if sizes[i] >= 2] or [int(np.argmax(sizes)) + 1]
    lab[(lab > 0) & ~np.isin(lab, big)] = big[int(np.argmax(sizes[np.array(big) - 1]))]
    parts = []
    for i in big:
        pm = np.repeat(np.repeat(lab == i, cell, 0), cell, 1)[:H, :W] & M
        if pm.any():
            parts.append(pm)
    return parts


def overedit_score(S: np.ndarray, Out: np.ndarray, T: np.ndarray, M: np.ndarray) -> float:
    inside = _cells(M.astype(np.float32)) >= 0.5
    if inside.all():
        return 10.0
    e_out = np.sqrt(_cells(((Out - S) ** 2).mean(axis=2)))
    e_edit = np.sqrt(_cells(((S - T) ** 2).mean(axis=2)))
    excess = np.maximum(0.0, e_out - TAU_CELL)[~inside].sum()
    change = e_edit[inside].sum()
    budget = max(change, BETA * inside.size)
    return 10.0 * float(np.clip(1 - excess / budget, 0, 1))


def _luma(a: np.ndarray) -> np.ndarray:
    return a @ np.array([0.299, 0.587, 0.114], np.float32)


def _grad(y: np.ndarray) -> float:
    return float(np.hypot(sobel(y, 0), sobel(y, 1)).mean())


def _hf_map(y: np.ndarray) -> np.ndarray:
    return np.abs(y - gaussian_filter(y, 1.0))


def _blockiness(y: np.ndarray, cell: int = CELL) -> float:
    dx = np.abs(np.diff(y, axis=1))
    dy = np.abs(np.diff(y, axis=0))
    bx = np.zeros(dx.shape[1], bool)
    bx[cell - 1:: cell] = True
    by = np.zeros(dy.shape[0], bool)
    by[cell - 1:: cell] = True
    border = np.concatenate([dx[:, bx].ravel(), dy[by].ravel()])
    inner = np.concatenate([dx[:, ~bx].ravel(), dy[~by].ravel()])
    return float(border.mean() / max(inner.mean(), 1e-4))


def pq_score(Out: np.ndarray, T: np.ndarray) -> float:
    yo, yt = _luma(Out), _luma(T)
    sharp = (_grad(yo) + 0.01) / (_grad(yt) + 0.01)
    noise = float(np.maximum(0.0, _hf_map(yo) - _hf_map(yt)).mean())
    block = _blockiness(yo) - _blockiness(yt)
    p_blur = np.clip((0.6 - sharp) / 0.3, 0, 1)
    p_noise = np.clip((noise - 0.012) / 0.03, 0, 1)
    p_block = np.clip((block - 0.5) / 1.0, 0, 1)
    return float(10.0 * (1 - p_blur) * (1 - p_noise) * (1 - p_block))


def _size(x) -> tuple[int, int]:
    """(width, height) of a PIL image or an (H, W[, 3]) array."""
    return x.size if isinstance(x, Image.Image) else (np.shape(x)[1], np.shape(x)[0])


def turned_wrong(output, target) -> bool:
    """Whether ``output`` is landscape where ``target`` is portrait, or the reverse: the shape of a quarter
    turn that kept the photo's shape, or of a turn nobody asked for. Resized to the target's size, its
    content could look right, so its edit counts as failed."""
    (ow, oh), (tw, th) = _size(output), _size(target)
    return (ow - oh) * (tw - th) < 0


def score(source, output, target, mask=None) -> VerifierScore:
    """Score an edit. Images: PIL or arrays (uint8 0–255 or float 0–1), same size as ``target``
    (the output is resized if not). ``mask``: bool/uint8 array or PIL "L", True/255 = edit region.
    An output turned the wrong way (``turned_wrong``) gets success 0."""
    T = _arr(target)
    size = (T.shape[1], T.shape[0])
    S = _arr(source, size)
    Out = _arr(output, size)
    M = _mask(mask, T.shape[:2])
    Sb, Ob, Tb = _blur(S), _blur(Out), _blur(T)
    fine = T @ _OPP.T - Tb
    succ = min(success_score(Sb, Ob, Tb, part, _rms(fine, part)) for part in regions(M))
    if turned_wrong(output, target):
        succ = 0.0
    over = overedit_score(Sb, Ob, Tb, M)
    sc = min(succ, over)
    pq = pq_score(Out, T)
    return VerifierScore(succ, over, sc, pq, float(np.sqrt(sc * pq)))


def _coarse_distances(source, output, target, coarse) -> tuple[float, float]:
    """RMS distances of output and source to the target after ``coarse`` (what the shaping scores compare)."""
    T = _arr(target)
    size = (T.shape[1], T.shape[0])
    Tc = coarse(T)
    d_out = float(np.sqrt(((coarse(_arr(output, size)) - Tc) ** 2).mean()))
    d_src = float(np.sqrt(((coarse(_arr(source, size)) - Tc) ** 2).mean()))
    return d_out, d_src


def closeness(source, output, target) -> float:
    """A dense shaping score for RL, −10…10 (not part of ``score``): how much closer the output is to the
    target than the source is, at token-cell resolution (the opponent-colour images averaged over 8×8
    cells), ``10 · clip(1 − d(output, target) / d(source, target), −1, 1)``.

    ``score`` gives 0 to every output that is no closer to the target than the source, so on an edit the
    model cannot do yet (a flip) all of a group's candidates tie and GRPO learns nothing. This score still
    ranks them by their coarse layout, the part of a flip the model can learn first."""

    def coarse(a: np.ndarray) -> np.ndarray:
        q = a @ _OPP.T
        return np.stack([_cells(q[..., i]) for i in range(3)], -1)

    d_out, d_src = _coarse_distances(source, output, target, coarse)
    return 10.0 * float(np.clip(1 - d_out / (d_src if d_src > 0 else 0.05), -1, 1))


def _luma_cells(a: np.ndarray, grid: int, dtype: type = np.float64) -> np.ndarray:
    """The layout the layout scores compare: luminance averaged over a ``grid``×``grid`` partition of the
    image, minus its mean (so brightness and colour do not count)."""
    y = np.asarray(Image.fromarray(np.clip(_luma(a) * 255, 0, 255).astype(np.uint8)).resize(
        (grid, grid), Image.Resampling.BOX), dtype) / 255.0
    return y - y.mean()


def layout_closeness(source, output, target, grid: int = 4) -> float:
    """Like ``closeness``, but on the layout alone, −10…10: luminance averaged over a ``grid``×``grid``
    partition of the image, minus its mean (so brightness and colour do not count). ``closeness``
    rewarded keeping the photo's palette before its layout (research/LOG.md)."""

    d_out, d_src = _coarse_distances(source, output, target, lambda a: _luma_cells(a, grid, np.float32))
    return 10.0 * float(np.clip(1 - d_out / max(d_src, 0.02), -1, 1))


LAYOUT_KEPT = 0.1  # 1 − corr(source, target) below this: the edit keeps the layout, layout_corr is 0


def layout_correlation(source, output, target, grid: int = 8) -> float:
    """A layout shaping score that does not pay for flat outputs, −10…10: how much more the output's
    layout correlates with the target's than with the source's, ``10 · clip((corr(o, t) − corr(o, s)) /
    (1 − corr(s, t)), −1, 1)``, on luminance averaged over a ``grid``×``grid`` partition. The target
    scores 10, a copy of the source −10, a flat image 0. (``layout_closeness`` rated flat grey halfway
    between source and target on a flip, and GRPO found it.) Meant for geometry edits: where an edit
    keeps the layout (colour edits, 1 − corr(s, t) < ``LAYOUT_KEPT``), the score is 0 for every output:
    there the ratio only multiplies noise, and GRPO paid for it lost ground on the colour edits
    (research/LOG.md)."""

    def layout(a: np.ndarray) -> np.ndarray:
        y = _luma_cells(a, grid).ravel()
        n = float(np.sqrt((y**2).sum()))
        return y / n if n > 1e-3 else np.zeros_like(y)  # (nearly) flat: no correlation with anything

    T = _arr(target)
    size = (T.shape[1], T.shape[0])
    s, t = layout(_arr(source, size)), layout(T)
    spread = 1.0 - float(s @ t)
    if spread < LAYOUT_KEPT:  # decided by source and target alone: the output need not be read
        return 0.0
    o = layout(_arr(output, size))
    gain = float(o @ t - o @ s) / spread
    return 10.0 * float(np.clip(gain, -1, 1))


# the shaping scores by name (reward fields ``verifier.<name>``, eval's JSON)
SHAPING = {"closeness": closeness, "layout": layout_closeness, "layout_corr": layout_correlation}
# what 0 means on each shaping score (the target always scores 10)
SHAPING_ZERO = {"closeness": "0 = no closer than the source", "layout": "0 = no closer than the source",
                "layout_corr": "0 = flat, -10 = the source"}
SHAPING_FAILED = -10.0  # what an undecodable output gets on every shaping score: the bottom of the range


def edit_magnitude(source, target, mask=None) -> float:
    """rms_M(P(source), P(target)): how much the edit changes its region (the generator rejects
    samples below ``MIN_MAGNITUDE``, whose ground truth is too close to the source to judge)."""
    T = _arr(target)
    S = _arr(source, (T.shape[1], T.shape[0]))
    return _rms(_blur(S) - _blur(T), _mask(mask, T.shape[:2]))


MIN_MAGNITUDE = 0.14


def psnr(a, b) -> float:
    x, y = _arr(a), _arr(b, (_arr(a).shape[1], _arr(a).shape[0]))
    mse = float(((x - y) ** 2).mean())
    return 99.0 if mse == 0 else float(10 * np.log10(1.0 / mse))


def vq_like_degrade(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Imitate a 22–24 dB VQ reconstruction: lose detail (down/up-sampling), blocky JPEG, a little noise.
    Used to calibrate the verifier's tolerance and in tests."""
    w, h = img.size
    f = 1 + 1.5 * strength
    small = img.resize((max(8, int(w / f)), max(8, int(h / f))), Image.Resampling.BILINEAR)
    soft = small.resize((w, h), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    soft.save(buf, "JPEG", quality=int(max(10, 70 - 30 * strength)))
    buf.seek(0)
    a = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
    # a small colour cast and noise, as a codebook's nearest colour is never exact
    a = a + rng.normal(0, 0.02 * strength, (1, 1, 3)).astype(np.float32)
    a = a + rng.normal(0, 0.02 * strength, a.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.round(a * 255), 0, 255).astype(np.uint8))
