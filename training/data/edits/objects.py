"""Objects that object edits add, remove, recolour, move, resize and replace.

Two kinds of sprite (RGBA, alpha-composited onto the photo):

* drawn shapes — circle, square, triangle, star, diamond — in named colours (always available);
* photographic cut-outs from Tux Paint's stamps (``tuxpaint-stamps-default``, GPL-2) with their
  English description. A handful ship in ``assets/stamps`` (see its README); a fuller set is used when
  the Debian package is unpacked (``EARL_TUXPAINT_STAMPS`` or
  ``data/cache/unpacked/tuxpaint-stamps-default/usr/share/tuxpaint/stamps``).

Sizes and positions are words with fixed geometry so the instruction fully determines the result.
At 128² area (16×16 tokens of 8 px) a "small" object is ~3.5 tokens wide, so always visible.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[3]
ASSET_STAMPS = REPO / "assets" / "stamps"
CACHE_STAMPS = REPO / "data" / "cache" / "unpacked" / "tuxpaint-stamps-default" / "usr/share/tuxpaint/stamps"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (250, 215, 30),
    "orange": (245, 130, 20),
    "purple": (140, 50, 180),
    "pink": (245, 120, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "cyan": (30, 200, 220),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond")

# fraction of the image's short side taken by the object's longer side
SIZES: dict[str, float] = {"small": 0.24, "medium": 0.34, "large": 0.46}

# centre of each named position, as fractions of width/height
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.2, 0.2), "top": (0.5, 0.2), "top right": (0.8, 0.2),
    "left": (0.2, 0.5), "center": (0.5, 0.5), "right": (0.8, 0.5),
    "bottom left": (0.2, 0.8), "bottom": (0.5, 0.8), "bottom right": (0.8, 0.8),
}
POSITION_PHRASE = {
    "top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left corner", "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}
POSITION_NOUN = {
    "top left": "the top left corner", "top": "the top", "top right": "the top right corner",
    "left": "the left side", "center": "the center", "right": "the right side",
    "bottom left": "the bottom left corner", "bottom": "the bottom", "bottom right": "the bottom right corner",
}


@dataclass(frozen=True)
class Stamp:
    name: str          # short noun used in instructions ("duck")
    description: str   # Tux Paint's English description ("A duck.")
    path: str


def shape_sprite(shape: str, colour: str, size: int) -> np.ndarray:
    """RGBA uint8 sprite of a filled shape, antialiased by drawing at 4× and downscaling."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")
    s = 4 * size
    im = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    fill = COLOURS[colour] + (255,)
    m = s * 0.04
    if shape == "circle":
        d.ellipse([m, m, s - m, s - m], fill=fill)
    elif shape == "square":
        d.rectangle([s * 0.1, s * 0.1, s * 0.9, s * 0.9], fill=fill)
    elif shape == "triangle":
        d.polygon([(s / 2, m), (s - m, s - m * 3), (m, s - m * 3)], fill=fill)
    elif shape == "diamond":
        d.polygon([(s / 2, m), (s - m * 3, s / 2), (s / 2, s - m), (m * 3, s / 2)], fill=fill)
    elif shape == "star":
        pts = []
        for i in range(10):
            r = (s / 2 - m) if i % 2 == 0 else (s / 2 - m) * 0.45
            t = -np.pi / 2 + i * np.pi / 5
            pts.append((s / 2 + r * np.cos(t), s / 2 + 0.06 * s + r * np.sin(t)))
        d.polygon(pts, fill=fill)
    return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS))


def stamp_sprite(stamp: Stamp, size: int) -> np.ndarray:
    """RGBA sprite whose longer side is ``size`` px (resized on premultiplied alpha: no dark fringes)."""
    im = _load_rgba(stamp.path)
    w, h = im.size
    s = size / max(w, h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    a = np.asarray(im, dtype=np.float32) / 255.0
    pre = np.concatenate([a[..., :3] * a[..., 3:], a[..., 3:]], axis=2)
    chans = [np.asarray(Image.fromarray(pre[..., c]).resize((nw, nh), Image.Resampling.LANCZOS)) for c in range(4)]
    r = np.clip(np.stack(chans, axis=2), 0, 1)
    alpha = r[..., 3:]
    rgb = np.where(alpha > 1e-4, r[..., :3] / np.maximum(alpha, 1e-4), 0)
    return np.round(np.concatenate([np.clip(rgb, 0, 1), alpha], axis=2) * 255).astype(np.uint8)


@functools.lru_cache(maxsize=256)
def _load_rgba(path: str) -> Image.Image:
    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    bb = rgba.getbbox()
    return rgba.crop(bb) if bb else rgba


def _name_from_description(desc: str) -> str:
    d = re.sub(r"\s*\(.*?\)", "", desc.strip())
    d = re.sub(r"[\"'“”‘’]", "", d)
    d = re.sub(r"[.!]+$", "", d)
    d = re.sub(r"^(an?|the)\s+", "", d, flags=re.I)
    d = re.sub(r"^very\s+", "", d, flags=re.I)
    return d.lower().strip()


@functools.lru_cache(maxsize=4)
def load_stamps(extra_dir: str | None = None) -> tuple[Stamp, ...]:
    """Shipped stamps plus, when available, photographic ones from the unpacked Debian package."""
    out: dict[str, Stamp] = {}
    shipped_from: set[str] = set()
    mf = ASSET_STAMPS / "stamps.jsonl"
    if mf.exists():
        for line in mf.read_text().splitlines():
            r = json.loads(line)
            out[r["name"]] = Stamp(r["name"], r["description"], str(ASSET_STAMPS / r["file"]))
            shipped_from.add(r["orig_path"].split("stamps/", 1)[-1])
    folder = extra_dir or os.environ.get("EARL_TUXPAINT_STAMPS") or (str(CACHE_STAMPS) if CACHE_STAMPS.is_dir() else None)
    if folder and Path(folder).is_dir():
        for st in _scan_tuxpaint(folder):
            if st.name.split()[0] in SIZES:  # "a small small pitcher"
                continue
            if str(Path(st.path).relative_to(folder)) not in shipped_from:  # same picture, other name
                out.setdefault(st.name, st)
    return tuple(sorted(out.values(), key=lambda s: s.name))


NATURAL_CATEGORIES = ("animals", "food", "plants", "vehicles", "household", "hobbies", "sports")


def _scan_tuxpaint(folder: str) -> list[Stamp]:
    """Photographic cut-outs: PNG with alpha, ≥ 400 distinct colours on the object, ≥ 25 % opaque,
    a short English description (≤ 5 words, "A …"/"An …") — cartoons and symbols fail one of these."""
    res = []
    root = Path(folder)
    for p in sorted(root.rglob("*.png")):
        rel = p.relative_to(root)
        if rel.parts[0] not in NATURAL_CATEGORIES or "cartoon" in rel.parts:
            continue
        txt = p.with_suffix(".txt")
        if not txt.exists():
            continue
        desc = txt.read_text(errors="replace").splitlines()[0].strip()
        # one countable object ("A duck.", "An apricot."): skips slogans, plurals and bare names
        if len(desc.split()) > 5 or not re.match(r"^(A|An)\s", desc):
            continue
        a = np.asarray(Image.open(p).convert("RGBA"))
        op = a[..., 3] > 128
        if op.mean() < 0.25:
            continue
        q = (a[..., :3][op] >> 3).astype(np.int32)
        if len(np.unique(q[:, 0] * 1024 + q[:, 1] * 32 + q[:, 2])) < 400:
            continue
        res.append(Stamp(_name_from_description(desc), desc, str(p)))
    return res


def place(size_px: int, pos: str, W: int, H: int, jitter: tuple[float, float] = (0.0, 0.0),
          sprite_wh: tuple[int, int] | None = None) -> tuple[int, int]:
    """Top-left pixel of a sprite at a named position (clamped inside the image with a 2 px margin)."""
    sw, sh = sprite_wh or (size_px, size_px)
    fx, fy = POSITIONS[pos]
    cx, cy = (fx + jitter[0]) * W, (fy + jitter[1]) * H
    x = int(round(min(max(cx - sw / 2, 2), W - sw - 2)))
    y = int(round(min(max(cy - sh / 2, 2), H - sh - 2)))
    return x, y


def composite(a: np.ndarray, sprite: np.ndarray, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    """Alpha-composite ``sprite`` (RGBA uint8) onto float RGB ``a`` at (x, y); returns (image, alpha map)."""
    out = a.copy()
    h, w = sprite.shape[:2]
    H, W = a.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    alpha_full = np.zeros((H, W), np.float32)
    if x1 <= x0 or y1 <= y0:
        return out, alpha_full
    sp = sprite[y0 - y:y1 - y, x0 - x:x1 - x].astype(np.float32) / 255.0
    al = sp[..., 3:]
    out[y0:y1, x0:x1] = sp[..., :3] * al + out[y0:y1, x0:x1] * (1 - al)
    alpha_full[y0:y1, x0:x1] = al[..., 0]
    return out, alpha_full


def object_size_px(size_word: str, W: int, H: int) -> int:
    return max(16, int(round(SIZES[size_word] * min(W, H))))
