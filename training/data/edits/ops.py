"""Pixel programs for global and geometric edits: float RGB arrays in [0, 1], shape (H, W, 3).

Every function is exact and deterministic, so its output is the ground truth of the edit.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def to_array(img: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    a = np.asarray(img)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    return a.astype(np.float32)


def to_image(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8), "RGB")


def gray(a: np.ndarray) -> np.ndarray:
    return (a @ LUMA)[..., None]


def grayscale(a: np.ndarray) -> np.ndarray:
    return np.repeat(gray(a), 3, axis=2)


SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)


def sepia(a: np.ndarray) -> np.ndarray:
    return np.clip(a @ SEPIA.T, 0, 1)


def invert(a: np.ndarray) -> np.ndarray:
    return 1.0 - a


def brightness(a: np.ndarray, factor: float) -> np.ndarray:
    """factor > 1 brightens (multiplies, clipped), < 1 darkens."""
    return np.clip(a * factor, 0, 1)


def contrast(a: np.ndarray, factor: float) -> np.ndarray:
    """Stretch (factor > 1) or squeeze (< 1) around the mean luminance."""
    m = float(gray(a).mean())
    return np.clip((a - m) * factor + m, 0, 1)


def saturation(a: np.ndarray, factor: float) -> np.ndarray:
    g = gray(a)
    return np.clip(g + (a - g) * factor, 0, 1)


def temperature(a: np.ndarray, amount: float) -> np.ndarray:
    """amount > 0: warmer (more red, less blue); < 0: cooler."""
    shift = np.array([amount, 0.25 * amount, -amount], np.float32)
    return np.clip(a + shift, 0, 1)


def hflip(a: np.ndarray) -> np.ndarray:
    return a[:, ::-1].copy()


def vflip(a: np.ndarray) -> np.ndarray:
    return a[::-1].copy()


def rotate(a: np.ndarray, degrees_cw: int) -> np.ndarray:
    """Rotate by a multiple of 90° clockwise (90/270 turn a W×H image into an H×W one)."""
    k = (degrees_cw // 90) % 4
    return np.rot90(a, k=-k, axes=(0, 1)).copy()


def zoom(a: np.ndarray, factor: float, cx: float, cy: float) -> np.ndarray:
    """Crop a window 1/factor of each side centred at (cx, cy) (fractions, clamped) and scale it back up."""
    h, w = a.shape[:2]
    cw, ch = w / factor, h / factor
    x0 = min(max(cx * w - cw / 2, 0.0), w - cw)
    y0 = min(max(cy * h - ch / 2, 0.0), h - ch)
    img = to_image(a)
    out = img.resize((w, h), Image.Resampling.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
    return to_array(out)
