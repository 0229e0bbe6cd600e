"""SFT targets an editing model can learn where the true target codes are out of its reach.

A 2× zoom's true target is the tokenizer's code for each *upscaled quarter* of a source cell: a code the
source grid does not contain, so it is not a copy from anywhere, and hard for the LM to learn.
Copying each source cell into the 2×2 block of target cells it turns into (nearest-neighbour upscaling
of the code grid) is a positional copy, the kind of mapping the model does learn for flips and quarter
turns, and through the tokenizer it scores about half of the ceiling on held-out zooms (``python -m
research.proxy_targets``). SFT on those targets: ``train_sft --zoom-targets copy``.

Local edits (objects) have the opposite problem: the tokenizer's encoder sees past its 8×8 cell, so drawing
a shape changes the codes of cells whose pixels did not change. On object edits many more of the
target's codes differ from the source's than cells whose pixels changed: the extra codes are changes the
LM has to guess and that the picture does not need. ``pin_local`` keeps the target's codes
on the cells whose pixels changed (and their 8 neighbours) and the source's everywhere else, which through
the tokenizer scores as the true target does (``python -m research.proxy_targets --kinds object``):
everything outside the edit becomes an exact copy (``train_sft --object-targets pin``).

"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation

from training.data.edits.kinds import mask_cells
from training.routing import nearest_unchanged, zoom_cells

# A cell counts as changed when some pixel moved by more than this (sum over RGB, 0–765): rendering an
# edit leaves untouched pixels exactly equal, so this only ignores rounding.
PIXEL_CHANGE = 12


def zoom_copy(src: np.ndarray, params: dict) -> np.ndarray:
    """The source code grid zoomed like ``ops.zoom`` (same window), each target cell reading the source
    cell under its centre."""
    rows, cols = zoom_cells(*src.shape, params)
    return src[rows][:, cols]


def apply_zoom_copy(records: list[dict]) -> int:
    """Replace the targets of zoom records (which carry their ``params``) by ``zoom_copy`` of the source,
    in place; returns how many were replaced. Records without params are left alone."""
    n = 0
    for r in records:
        if r.get("kind") == "zoom" and r.get("params"):
            r["tgt"] = zoom_copy(r["src"], r["params"]).astype(r["tgt"].dtype)
            n += 1
    return n


def changed_cells(src: np.ndarray, tgt: np.ndarray, factor: int) -> np.ndarray | None:
    """(H, W) bool: which ``factor``-pixel cells of two same-sized (h, w, 3) uint8 images differ; None when
    the sizes differ (a quarter turn)."""
    if src.shape != tgt.shape:
        return None
    h, w = src.shape[0] // factor, src.shape[1] // factor
    d = np.abs(src.astype(np.int16) - tgt.astype(np.int16)).sum(-1) > PIXEL_CHANGE
    return mask_cells(d[: h * factor, : w * factor], factor)  # whole cells only, as the code grid


def pin_local(src: np.ndarray, tgt: np.ndarray, changed: np.ndarray, grow: int = 1) -> np.ndarray:
    """``tgt`` on the changed cells grown by ``grow`` cells (8-neighbourhood), ``src`` elsewhere."""
    m = changed.astype(bool)
    if grow > 0:
        m = binary_dilation(m, structure=np.ones((3, 3), bool), iterations=grow)
    return np.where(m, tgt, src)


def fill_from_outside(src: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """Each changed cell takes the source code of the nearest unchanged cell: a positional copy (like
    ``zoom_copy``) that stands in for what a removed object hid (``--fill``)."""
    if changed.all():
        return src.copy()
    rows, cols = nearest_unchanged(changed)
    return src[rows, cols]


def _local_records(records: list[dict], kind: str | None = None):
    """The records of a local edit (``kind`` only, if given) that carry ``changed`` (pretokenize writes
    it), with the cells it changed. Global edits and flips change every cell, quarter turns the shape."""
    for r in records:
        ch = r.get("changed")
        if (kind is None or r.get("kind") == kind) and ch is not None and r["src"].shape == r["tgt"].shape \
                and not ch.all():
            yield r, ch


def apply_remove_fill(records: list[dict]) -> int:
    """``fill_from_outside`` the targets of ``remove`` records, in place; returns how many changed."""
    n = 0
    for r, ch in _local_records(records, "remove"):
        r["tgt"] = fill_from_outside(r["src"], ch).astype(r["tgt"].dtype)
        n += 1
    return n


def apply_pin_local(records: list[dict], grow: int = 1) -> int:
    """``pin_local`` the targets of local edits, in place; returns how many changed."""
    n = 0
    for r, ch in _local_records(records):
        r["tgt"] = pin_local(r["src"], r["tgt"], ch, grow).astype(r["tgt"].dtype)
        n += 1
    return n
