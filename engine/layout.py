"""The EARL / Emu3 token sequence: one builder and one parser, shared by inference and training.

```
BOS  IMG_START "H*W" IMG_TOKEN  (W visual + EOL) x H  EOF IMG_END  instruction [COT_OPENER THINK_START]
     [reasoning THINK_END]  IMG_START "H*W" IMG_TOKEN  (W visual + EOL) x H  EOF IMG_END  EOS
```
(docs/ARCHITECTURE.md §2). The "H*W" header is text, tokenized with the bundle's own tokenizer. Ids are looked
up by name, so Emu3's tokenizer (where the think markers are plain text, several tokens each) and the
nano tokenizer (single special tokens) go through the same code.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine import tokens as T

_VISUAL_RE = re.compile(r"^<\|visual token (\d{6})\|>$")
_HEADER_RE = re.compile(r"^\s*(\d+)\s*\*\s*(\d+)\s*$")


@dataclass(frozen=True, eq=False)
class SpecialIds:
    """Ids of the structural tokens and the visual tokens of one tokenizer."""

    bos: int
    eos: int
    img_start: int
    img_end: int
    img_token: int
    eol: int
    eof: int
    pad: int
    think_start_ids: tuple[int, ...]  # one id in nano tokenizers, several text tokens in Emu3's
    think_end_ids: tuple[int, ...]
    visual_ids: torch.Tensor  # LongTensor[K]: code -> token id
    code_of: torch.Tensor  # LongTensor[vocab]: token id -> code, -1 for non-visual tokens
    vocab_size: int  # len(tokenizer)
    _header_cache: dict = field(default_factory=dict, repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    visual_set: frozenset = field(default=frozenset(), repr=False)  # for fast Python-side membership

    @property
    def visual_np(self) -> np.ndarray:
        """``visual_ids`` as a numpy array (sequences are built from numpy code grids)."""
        return self.visual_ids.numpy()

    @property
    def think_start(self) -> int:
        if len(self.think_start_ids) != 1:
            raise ValueError("this tokenizer writes THINK_START as several tokens; use think_start_ids")
        return self.think_start_ids[0]

    @property
    def think_end(self) -> int:
        if len(self.think_end_ids) != 1:
            raise ValueError("this tokenizer writes THINK_END as several tokens; use think_end_ids")
        return self.think_end_ids[0]

    @property
    def codebook_size(self) -> int:
        return int(self.visual_ids.numel())

    @property
    def structural(self) -> tuple[int, ...]:
        """Single-token structural ids that never appear inside reasoning text."""
        base = (self.bos, self.eos, self.img_start, self.img_end, self.img_token, self.eol, self.eof, self.pad)
        if len(self.think_start_ids) == 1:
            base += self.think_start_ids
        return base

    def is_visual(self, ids: torch.Tensor | int) -> torch.Tensor | bool:
        if isinstance(ids, int):
            return 0 <= ids < self.code_of.numel() and bool(self.code_of[ids] >= 0)
        return self.code_of[ids.clamp(0, self.code_of.numel() - 1)] >= 0

    def header_ids(self, h: int, w: int) -> list[int]:
        """Tokens of the "H*W" header text."""
        key = (h, w)
        if key not in self._header_cache:
            self._header_cache[key] = _encode(self._tokenizer, f"{h}*{w}")
        return list(self._header_cache[key])

    @classmethod
    def from_tokenizer(cls, tok: Any) -> SpecialIds:
        """Look every id up by name; ValueError naming the missing tokens."""
        try:
            cached = _CACHE.get(tok)
        except TypeError:  # unhashable / not weak-referenceable tokenizer: no caching
            cached = None
        if cached is not None:
            return cached
        vocab = tok.get_vocab()
        names = {"bos": T.BOS, "eos": T.EOS, "img_start": T.IMG_START, "img_end": T.IMG_END,
                 "img_token": T.IMG_TOKEN, "eol": T.EOL, "eof": T.EOF, "pad": T.PAD}
        missing = [n for n in names.values() if n not in vocab]
        codes: dict[int, int] = {}
        for name, tid in vocab.items():
            m = _VISUAL_RE.match(name)
            if m:
                codes[int(m.group(1))] = tid
        if not codes:
            missing.append(T.visual_token_name(0))
        if missing:
            raise ValueError(f"tokenizer lacks the Emu3 tokens {', '.join(missing)}")
        k = len(codes)
        if sorted(codes) != list(range(k)):
            raise ValueError(f"visual tokens are not numbered 0..{k - 1} without gaps")
        visual_ids = torch.tensor([codes[i] for i in range(k)], dtype=torch.long)
        size = max(len(tok), int(visual_ids.max()) + 1)
        code_of = torch.full((size,), -1, dtype=torch.long)
        code_of[visual_ids] = torch.arange(k)
        think_start = tuple(_encode(tok, T.THINK_START))
        think_end = tuple(_encode(tok, T.THINK_END))
        out = cls(
            **{k_: vocab[v] for k_, v in names.items()},
            think_start_ids=think_start, think_end_ids=think_end,
            visual_ids=visual_ids, code_of=code_of, vocab_size=len(tok), _tokenizer=tok,
            visual_set=frozenset(visual_ids.tolist()),
        )
        try:
            _CACHE[tok] = out
        except TypeError:
            pass
        return out


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def special_ids(tok_or_ids: Any) -> SpecialIds:
    return tok_or_ids if isinstance(tok_or_ids, SpecialIds) else SpecialIds.from_tokenizer(tok_or_ids)


_TEXT_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TEXT_CACHE_SIZE = 1 << 16


def _encode(tok: Any, text: str) -> list[int]:
    if not text:
        return []
    # Training encodes the same instructions and reasoning texts over and over (a quarter of a GPU
    # step's preparation went to the tokenizer), so encodings are memoised per tokenizer.
    try:
        cache = _TEXT_CACHE.setdefault(tok, {})
    except TypeError:  # a tokenizer that cannot be weak-referenced: no caching
        return list(tok.encode(text, add_special_tokens=False))
    ids = cache.get(text)
    if ids is None:
        if len(cache) >= _TEXT_CACHE_SIZE:
            cache.clear()
        ids = cache[text] = tuple(tok.encode(text, add_special_tokens=False))
    return list(ids)


def _check_grid(grid: np.ndarray, sp: SpecialIds) -> np.ndarray:
    g = np.asarray(grid)
    if g.ndim != 2 or g.shape[0] < 1 or g.shape[1] < 1:
        raise ValueError(f"a code grid must be a non-empty 2-D array, got shape {g.shape}")
    if g.min() < 0 or g.max() >= sp.codebook_size:
        raise ValueError(f"grid codes must lie in [0, {sp.codebook_size}), got [{g.min()}, {g.max()}]")
    return g.astype(np.int64)


def image_ids(tok: Any, grid: np.ndarray) -> list[int]:
    """IMG_START "H*W" IMG_TOKEN rows EOF IMG_END for one code grid."""
    sp = special_ids(tok)
    g = _check_grid(grid, sp)
    h, w = g.shape
    rows = np.empty((h, w + 1), dtype=np.int64)
    rows[:, :w] = sp.visual_np[g]
    rows[:, w] = sp.eol
    return [sp.img_start, *sp.header_ids(h, w), sp.img_token, *rows.ravel().tolist(), sp.eof, sp.img_end]


def build_prompt(tok: Any, grid: np.ndarray | None, instruction: str, think: bool) -> list[int]:
    """BOS, the source image, the instruction and, in think mode, COT_OPENER + THINK_START.

    ``grid`` None leaves the image out (the unconditional branch of classifier-free guidance).
    """
    sp = special_ids(tok)
    ids = [sp.bos]
    if grid is not None:
        ids += image_ids(tok, grid)
    text = instruction.strip()
    if think:
        ids += _encode(tok, text + T.COT_OPENER) + list(sp.think_start_ids)
    else:
        ids += _encode(tok, text)
    return ids


def build_target(tok: Any, grid: np.ndarray, reasoning: str | None) -> list[int]:
    """[reasoning THINK_END] + target image + EOS: what the model generates after ``build_prompt``."""
    sp = special_ids(tok)
    ids: list[int] = []
    if reasoning is not None:
        ids += _encode(tok, reasoning) + list(sp.think_end_ids)
    return ids + image_ids(tok, grid) + [sp.eos]


def _find(seq: list[int], sub: tuple[int, ...] | list[int], start: int = 0) -> int:
    n = len(sub)
    for i in range(start, len(seq) - n + 1):
        if seq[i : i + n] == list(sub):
            return i
    return -1


def parse_image(tok: Any, ids: list[int], start: int = 0) -> tuple[np.ndarray, int]:
    """Parse IMG_START … IMG_END at ``ids[start:]``; returns (grid, index after IMG_END)."""
    sp = special_ids(tok)
    i = start
    if i >= len(ids) or ids[i] != sp.img_start:
        raise ValueError(f"malformed image: expected IMG_START at token {i}")
    try:
        j = ids.index(sp.img_token, i + 1)
    except ValueError:
        raise ValueError("malformed image: IMG_TOKEN after the header is missing") from None
    header = tok.decode(ids[i + 1 : j])
    m = _HEADER_RE.match(header)
    if not m:
        raise ValueError(f"malformed image header {header!r}: expected 'H*W'")
    h, w = int(m.group(1)), int(m.group(2))
    if h < 1 or w < 1:
        raise ValueError(f"malformed image header {header!r}: empty grid")
    if ids[i + 1 : j] != sp.header_ids(h, w):
        raise ValueError(f"image header {header!r} is not tokenized as the tokenizer writes '{h}*{w}'")
    k = j + 1
    need = h * (w + 1)
    body = torch.tensor(ids[k : k + need], dtype=torch.long)
    if body.numel() < need:
        raise ValueError(f"image ends early: header says {h}*{w}, got {body.numel()} of {need} grid tokens")
    body = body.view(h, w + 1)
    bad_eol = (body[:, w] != sp.eol).nonzero()
    if bad_eol.numel():
        r = int(bad_eol[0, 0])
        row = body[r].tolist()
        if sp.eol in row[:w]:
            raise ValueError(f"row {r} has {row.index(sp.eol)} visual tokens, header says {w}")
        raise ValueError(f"row {r} does not end with EOL (found token {row[w]})")
    codes = sp.code_of[body[:, :w].clamp(0, sp.code_of.numel() - 1)]
    bad = (codes < 0).nonzero()
    if bad.numel():
        r, c = int(bad[0, 0]), int(bad[0, 1])
        tid = int(body[r, c])
        raise ValueError(f"row {r} col {c}: token {tid} is not a visual token" + (" (row too short)" if tid == sp.eol else ""))
    k += need
    if ids[k : k + 2] != [sp.eof, sp.img_end]:
        raise ValueError(f"image has more than {h} rows or lacks EOF IMG_END after row {h - 1}")
    return codes.numpy(), k + 2


def parse_generation(tok: Any, ids: list[int] | torch.Tensor, expect_hw: tuple[int, int] | None = None,
                     transpose: bool = False) -> tuple[str, np.ndarray]:
    """Generated ids (after the prompt) -> (reasoning text, (H, W) code grid).

    Accepts what ``build_target`` writes, followed by optional PAD tokens. ValueError with a clear
    message for anything else (missing IMG_START or THINK_END, bad header, wrong row length, missing
    EOL / EOF / IMG_END / EOS, a grid shaped neither ``expect_hw`` nor, with ``transpose``, its
    transpose: what ``engine.constraint`` allows).
    """
    sp = special_ids(tok)
    ids = [int(x) for x in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
    try:
        s = ids.index(sp.img_start)
    except ValueError:
        raise ValueError("generation has no IMG_START: the target image is missing") from None
    reasoning = ""
    if s > 0:
        n = len(sp.think_end_ids)
        if n == 0 or ids[s - n : s] != list(sp.think_end_ids) or _find(ids[:s], sp.think_end_ids) != s - n:
            raise ValueError("text before the image must be reasoning ending with THINK_END")
        reasoning = tok.decode(ids[: s - n])
    grid, k = parse_image(tok, ids, s)
    if expect_hw is not None and tuple(grid.shape) not in output_shapes(expect_hw, transpose):
        expected = " or ".join(f"{a}*{b}" for a, b in output_shapes(expect_hw, transpose))
        raise ValueError(f"target grid is {grid.shape[0]}*{grid.shape[1]}, expected {expected}")
    if k >= len(ids) or ids[k] != sp.eos:
        raise ValueError("generation does not end with EOS after the image")
    if any(x != sp.pad for x in ids[k + 1 :]):
        raise ValueError("tokens other than padding follow EOS")
    return reasoning, grid


def output_shapes(src_hw: tuple[int, int], transpose: bool) -> tuple[tuple[int, int], ...]:
    """The output grid shapes allowed for a source of shape ``src_hw``: its own, and with ``transpose`` the
    transposed one too (a quarter turn of a non-square photo)."""
    h, w = (int(x) for x in src_hw)
    return ((h, w), (w, h)) if transpose and h != w else ((h, w),)


def grid_positions(tok: Any, ids: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, row, col) LongTensors for GridEmbedding, same length as ``ids`` (a 1-D sequence).

    Visual tokens and EOLs inside the k-th image (k = 1, 2, … counted by IMG_START) get image=k, their
    row, and their column (EOL: column W, one past the last visual token). Everything else is 0.
    Works on prefixes too, so a sequence's features never depend on what follows.
    """
    seq = torch.as_tensor(ids if isinstance(ids, torch.Tensor) else list(ids), dtype=torch.long).reshape(1, -1)
    return tuple(f[0] for f in grid_positions_batch(tok, seq))  # type: ignore[return-value]


def grid_positions_batch(tok: Any, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``grid_positions`` of every row of a (B, T) id tensor (padding is neither visual nor EOL)."""
    # Vectorised with running maxima of "last index where …", so a batch costs a few tensor ops
    # instead of a Python loop per token (which would dominate a GPU training step's preparation).
    sp = special_ids(tok)
    ids = ids.long()
    n_t = ids.shape[1]
    idx = torch.arange(n_t).expand_as(ids)
    none = torch.full_like(ids, -1)
    code_of = sp.code_of.to(ids.device)
    is_vis = (code_of[ids.clamp(0, code_of.numel() - 1)] >= 0) & (ids >= 0) & (ids < code_of.numel())
    is_eol = ids == sp.eol
    k = torch.cumsum(ids == sp.img_start, 1)
    opener = (ids == sp.img_token) & (k > 0)  # starts (or restarts) the rows of image k
    last_open = torch.cummax(torch.where(opener, idx, none), 1).values
    breaker = ~(is_vis | is_eol | opener)  # any other token ends the grid
    last_break = torch.cummax(torch.where(breaker, idx, none), 1).values
    inside = (is_vis | is_eol) & (last_open > last_break)
    eols = torch.cumsum(is_eol, 1)
    row = eols - is_eol.long() - torch.gather(eols, 1, last_open.clamp(min=0))
    last_eol = torch.cummax(torch.where(is_eol, idx, none), 1).values
    prev_eol = torch.cat([none[:, :1], last_eol[:, :-1]], 1)  # the last EOL strictly before each token
    col = idx - torch.maximum(last_open, prev_eol) - 1
    zero = torch.zeros_like(ids)
    return torch.where(inside, k, zero), torch.where(inside, row, zero), torch.where(inside, col, zero)
