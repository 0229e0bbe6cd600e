"""Draft tokens for speculative decoding of an edit: the source image's codes, moved as the edit moves them.

Most of an edit's output is a copy of its source: the untouched cells of an object edit, every cell of
a flip or quarter turn (moved, and with an equivariant tokenizer mapped by a fixed code permutation).
``CopyDrafter`` guesses each output cell from the source grid under each symmetry of the square that
keeps the output's shape, and uses the symmetry whose guesses matched the most codes emitted so far
(identity first). The sampler feeds several guesses in one forward pass and keeps those the model would
have chosen anyway, so a draft only changes speed, never the output (``engine.sampler``).

``draft_gain`` picks how many tokens to feed from the running share of correct guesses: a forward pass
of k tokens per candidate costs more than one, and more so at larger batches (``benchmarks.speculative``),
so colour edits, where guesses rarely match, decode about one token at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engine.layout import parse_image, special_ids
from engine.vq import D4, apply_d4

DRAFT_LENGTHS = (1, 2, 4, 8, 16)


def source_grid(tok: Any, prompt: list[int]) -> np.ndarray | None:
    """The code grid of the (first) image in ``prompt``, or None when it has none."""
    sp = special_ids(tok)
    try:
        start = prompt.index(sp.img_start)
    except ValueError:
        return None
    return parse_image(tok, prompt, start)[0]


def code_permutations(vq: Any) -> dict[tuple[int, bool], np.ndarray]:
    """``perm[c]`` for each symmetry when the tokenizer maps codes by a fixed permutation (an equivariant
    NanoVQ); else only the identity, whose codes stay (a moved cell of another tokenizer gets a code
    unrelated to its source's)."""
    perm = getattr(vq, "code_permutation", None)
    if perm is not None and getattr(getattr(vq, "config", None), "equivariant", False):
        return {t: np.asarray(perm(*t)) for t in D4}
    return {(0, False): None}


class CopyDrafter:
    """Guesses the output cells of one candidate (see the module docstring).

    Guessers, each scored by how many emitted codes it would have guessed: the source grid under every
    symmetry that fits the output's shape; the best of those through a map from guessed to emitted codes
    learnt while decoding (a colour edit turns a code into about the same code everywhere); the cell to
    the left and the cell above (zooms repeat cells, flat regions repeat codes). The best one guesses.
    """

    def __init__(self, source: np.ndarray, out_hw: tuple[int, int], perms: dict[tuple[int, bool], np.ndarray | None]):
        src = torch.as_tensor(np.asarray(source, dtype=np.int64))
        self.sym: list[np.ndarray] = []
        for t, p in perms.items():
            g = apply_d4(src, *t).numpy()
            if g.shape == tuple(out_hw):
                self.sym.append(p[g] if p is not None else g)
        self.guessers: list[tuple] = [("sym", i) for i in range(len(self.sym))]
        if self.sym:
            self.guessers.append(("map",))
        self.guessers += [("left",), ("above",)]
        self.hits = np.zeros(len(self.guessers), dtype=np.int64)
        self.best = 0
        self.best_sym = 0
        self.map: dict[int, int] = {}
        self.out = np.full(out_hw, -1, dtype=np.int64)  # emitted codes
        self.pending = np.full(out_hw, -1, dtype=np.int64)  # guesses of the current pass

    def _known(self, r: int, c: int) -> int:
        v = int(self.out[r, c])
        return v if v >= 0 else int(self.pending[r, c])

    def _guess(self, g: tuple, r: int, c: int) -> int:
        kind = g[0]
        if kind == "sym":
            return int(self.sym[g[1]][r, c])
        if kind == "map":
            s = int(self.sym[self.best_sym][r, c])
            return self.map.get(s, s)
        if kind == "left":
            return self._known(r, c - 1) if c > 0 else -1
        return self._known(r - 1, c) if r > 0 else -1  # above

    def guess(self, row: int, col: int) -> int | None:
        """The guessed code at output cell (row, col), or None; guesses must come in decoding order."""
        v = self._guess(self.guessers[self.best], row, col)
        self.pending[row, col] = v
        return v if v >= 0 else None

    def observe(self, row: int, col: int, code: int) -> bool:
        """The model emitted ``code`` at (row, col): score every guesser, learn the code map. Returns
        whether ``guess`` would have been right there."""
        right = [self._guess(g, row, col) == code for g in self.guessers]
        hit = right[self.best]
        self.hits += right
        self.out[row, col] = code
        if self.sym:
            self.map[int(self.sym[self.best_sym][row, col])] = code
            self.best_sym = int(self.hits[: len(self.sym)].argmax())
        self.best = int(self.hits.argmax())  # argmax keeps the first (identity) on ties
        return hit


def draft_cost(k: int, rows: int) -> float:
    """A forward pass of k tokens per row, relative to one token: fitted to the measurements above, plus
    a little for the bookkeeping of a pass with guesses."""
    if k <= 1:
        return 1.0
    return 1.05 + min(0.07 * rows**0.7, 0.3) * (k - 1)


def draft_gain(k: int, accept: float, rows: int) -> float:
    """Expected tokens per unit of forward cost when feeding k tokens (the real one and k - 1 guesses),
    each guess right with probability ``accept`` once the ones before it were."""
    a = min(max(accept, 0.0), 0.999)
    return (1 - a**k) / (1 - a) / draft_cost(k, rows)


# Guess only when the model of ``draft_gain`` expects this much: near break-even the cost model's error
# and the loop's own bookkeeping decide, and both are against guessing.
MIN_GAIN = 1.25


def best_draft_length(accept: float, rows: int, limit: int) -> int:
    """The k of ``DRAFT_LENGTHS`` (up to ``limit``) with the highest ``draft_gain``; 1 unless that gain
    reaches ``MIN_GAIN``."""
    ks = [k for k in DRAFT_LENGTHS if k <= max(1, limit)]
    best = max(ks, key=lambda k: (draft_gain(k, accept, rows), -k))
    return best if draft_gain(best, accept, rows) >= MIN_GAIN else 1
