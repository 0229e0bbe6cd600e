"""Reasoning in words a person understands: grid boxes become places in the photo.

EARL-nano's think mode writes where an edit happens as token-grid coordinates ("Where: box [11,0,19,6] of the
20x13 grid"), the form it was trained on. ``plain(text)`` rewrites each such box into words ("the top right
area, about a quarter of the photo"), so two candidates that picked different boxes read differently. The
model's own text is unchanged; this is only how the studio shows it.
"""

from __future__ import annotations

import re

BOX = re.compile(r"(?:the whole image, )?box \[(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\] of the (\d+)\s*[x×]\s*(\d+) grid")


def place(box: tuple[int, int, int, int], grid: tuple[int, int]) -> str:
    """Words for an inclusive cell box ``(x0, y0, x1, y1)`` on a ``cols × rows`` grid."""
    x0, y0, x1, y1 = box
    cols, rows = max(1, grid[0]), max(1, grid[1])
    share = (x1 - x0 + 1) * (y1 - y0 + 1) / (cols * rows)
    if share >= 0.9:
        return "the whole image"
    cx, cy = (x0 + x1 + 1) / 2 / cols, (y0 + y1 + 1) / 2 / rows
    v = "top" if cy < 0.36 else "bottom" if cy > 0.64 else ""
    h = "left" if cx < 0.36 else "right" if cx > 0.64 else ""
    where = f"{v} {h}".strip() or "middle"
    if where in ("top", "bottom"):
        where = f"{where} middle"
    elif where in ("left", "right"):
        where = f"middle {where}"
    size = ("a small spot" if share < 0.06 else "a small area" if share < 0.15 else
            "about a quarter of the photo" if share < 0.35 else "about half of the photo" if share < 0.65 else
            "most of the photo")
    return f"the {where} area, {size}"


def plain(text: str) -> str:
    """``text`` with every grid box written as a place in the photo (other text unchanged)."""
    def sub(m: re.Match) -> str:
        x0, y0, x1, y1, c, r = (int(g) for g in m.groups())
        return place((x0, y0, x1, y1), (c, r))

    return BOX.sub(sub, text).replace("outside the box", "outside that area")
