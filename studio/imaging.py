"""Small image helpers for the studio: difference heatmaps, screen-sized previews, the "before" of a result
turned on its side. numpy/PIL, and ``engine.render``'s geometry search for the turn."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from studio.tempfiles import touch

# A perceptually ordered dark→bright ramp (anchors sampled from matplotlib's "inferno"), so the
# heatmap reads the same in print and for colour-blind raters; interpolated to 256 entries.
_ANCHORS = np.array(
    [
        [0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
        [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164],
    ],
    dtype=np.float64,
)
_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)],
    axis=1,
).astype(np.uint8)


SCREEN_SIDE = 1600  # longest side of an image the page shows; the full file is the download
MATCH_SIDE = 96  # longest side of the copies on which a turned result's turn is found

TURN_WORDS = {
    "rotate90_cw": "turned 90 degrees clockwise", "rotate90_ccw": "turned 90 degrees counter-clockwise",
    "transpose": "mirrored across its diagonal", "transverse": "mirrored across its other diagonal",
}


def turned_to_match(before: Image.Image, after: Image.Image) -> tuple[Image.Image, str | None]:
    """``before`` turned the way ``after`` is, when one is landscape and the other portrait (a quarter turn of
    a non-square photo): the compare widgets and the heatmap then put each pixel next to where it went.
    Returns (the picture to compare with, the symmetry's name or None when ``before`` is used as it is).
    The symmetry is the one among those that transpose which best explains ``after`` (``engine.render``),
    found on small copies."""
    from engine.render import apply_geometry, find_geometry

    if (before.width - before.height) * (after.width - after.height) >= 0:
        return before, None
    k = min(1.0, MATCH_SIDE / max(before.size))
    small = (max(1, round(before.width * k)), max(1, round(before.height * k)))
    geo, _ = find_geometry(before.convert("RGB").resize(small, Image.Resampling.BILINEAR),
                           after.convert("RGB").resize(small[::-1], Image.Resampling.BILINEAR))
    return apply_geometry(before, geo), geo.name


def screen_preview(img: Image.Image, max_side: int = SCREEN_SIDE) -> Image.Image:
    """``img`` downscaled (aspect kept) so that no side exceeds ``max_side``; ``img`` itself if none does."""
    if max(img.size) <= max_side:
        return img
    s = max_side / max(img.size)
    size = (max(1, round(img.width * s)), max(1, round(img.height * s)))
    # reducing_gap: box-reduce first, then Lanczos (same look, much faster on a 12 MP photo)
    return img.convert("RGB").resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def difference(a: Image.Image, b: Image.Image) -> np.ndarray:
    """Per-pixel mean absolute RGB difference in [0, 1]; ``b`` is resized to ``a`` if sizes differ."""
    if b.size != a.size:
        b = b.resize(a.size, Image.Resampling.BICUBIC)
    x = np.asarray(a.convert("RGB"), dtype=np.float32)
    y = np.asarray(b.convert("RGB"), dtype=np.float32)
    return np.abs(x - y).mean(axis=2) / 255.0


def diff_heatmap(before: Image.Image, after: Image.Image, full_scale: float = 0.5) -> tuple[Image.Image, float]:
    """Heatmap of where ``after`` differs from ``before`` and the mean difference (0–1).

    The colour scale is fixed (``full_scale`` = a mean channel change of half the range is white)
    rather than stretched to each image's maximum, so two candidates' heatmaps can be compared.
    """
    d = difference(before, after)
    idx = np.clip(np.sqrt(d / full_scale) * 255, 0, 255).astype(np.uint8)  # sqrt: small changes visible
    return Image.fromarray(_LUT[idx]), float(d.mean())


class PngFiles:
    """Content-addressed PNG files for images shown in the UI (previews, heatmaps). The folder is one of
    the studio's temp folders, kept under a cap by ``studio.tempfiles`` (a file handed out again is
    touched, so the files a page shows are the last to go).

    The UI is given file paths rather than PIL images: Gradio rewrites the cache file of a PIL image
    each time the same image is sent again, so a browser fetching it meanwhile can get an empty body;
    these files are written atomically, once, and served from this folder (``serve_in_place``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        if folder.exists():  # previews of an earlier run are never needed again
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, img: Image.Image) -> str:
        from feedback.store import _atomic_write, png_bytes

        data = png_bytes(img)
        h = hashlib.sha256(data).hexdigest()
        p = self.folder / f"{h}.png"
        if p.exists():
            touch(p)  # in use again: the temp-file prune keeps the most recently used
        else:
            _atomic_write(p, data)
        return str(p)

    def screen_size(self, src: Path, key: str, max_side: int = SCREEN_SIDE) -> str:
        """``src`` as the page shows it: the file itself when no side exceeds ``max_side``, else a copy
        downscaled to fit (made once per ``key``, e.g. the stored image's hash). A large photo's full file
        then travels only on download, not with every gallery, slider or heatmap update."""
        p = self.folder / f"screen-{key}-{max_side}.png"
        if p.exists():
            touch(p)
            return str(p)
        with Image.open(src) as im:
            if max(im.size) <= max_side:
                return str(src)
            small = screen_preview(im, max_side)
        from feedback.store import _atomic_write, png_bytes

        _atomic_write(p, png_bytes(small))
        return str(p)
