"""Synthetic photo edits with exact ground truth (see ``kinds`` for the programs)."""

from .kinds import CELL, KINDS, EditResult, Kind, cell_mask, grid_of, mask_box, render_wrong

KIND_NAMES: list[str] = list(KINDS)

__all__ = ["CELL", "KINDS", "KIND_NAMES", "EditResult", "Kind", "cell_mask", "grid_of", "mask_box", "render_wrong"]
