"""The free-form output constraint of EARL as a small state machine with precomputed additive masks.

What may be generated after the prompt (docs/ARCHITECTURE.md §2):
- think mode: free text (any token that is neither visual nor structural) until THINK_END; when the
  reasoning budget runs out, THINK_END is forced;
- then IMG_START, the "H*W" header and IMG_TOKEN, forced (without think: right away);
- exactly H rows of W visual tokens, each row followed by a forced EOL;
- EOF, IMG_END, EOS, forced.

With ``transpose`` (and H ≠ W) the header may also be the transposed "W*H", followed by W rows of H
tokens: a quarter turn of a landscape photo comes out portrait. The two headers share their tokens up to
the first one where they differ; there the model chooses between the two (and only those two), and the
chosen grid's tokens follow.

Everything after the free text is a fixed *template*: each position is one forced token, "any visual
token", or the header choice. So a state is just (position in the template, or -1 in free text), and
every position's mask is one row of a small table ``masks`` (M, vocab) of additive 0/-inf masks: row 0
free text, row 1 visual, one row per distinct forced token, one for the choice. The sampler gathers rows
of this table; training replays a finished sequence into the same row indices (``replay``), so both use
identical masks, and a generation that took the transposed header trains the choice like any other token.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.layout import SpecialIds, output_shapes, special_ids

TEXT_ROW = 0
VISUAL_ROW = 1
VIS = -1  # template entry: any visual token
CHOICE = -2  # template entry: the first header token where "H*W" and the transposed "W*H" differ (model picks)

DEFAULT_MAX_REASONING = 512  # free reasoning tokens when the caller sets no budget


def image_part(sp: SpecialIds, h: int, w: int) -> list[int]:
    """The template of one output grid: IMG_START "H*W" IMG_TOKEN, H rows of (W × VIS, EOL), EOF IMG_END EOS."""
    part = [sp.img_start, *sp.header_ids(h, w), sp.img_token]
    for _ in range(h):
        part += [VIS] * w + [sp.eol]
    return part + [sp.eof, sp.img_end, sp.eos]


def _first_difference(a: list[int], b: list[int]) -> int:
    """Index of the first entry where ``a`` and ``b`` differ (both must differ within their common length).

    Two headers of different text differ at a token, or one header ends where the other goes on, and then
    IMG_TOKEN (never part of a header) faces a header token: so the image parts of H*W and W*H always
    differ within the header and its IMG_TOKEN.
    """
    return next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)


@dataclass
class State:
    """Where one candidate is: ``pos`` -1 while in free text, else an index into the template;
    ``transposed`` once it has chosen the "W*H" header."""

    pos: int
    n_text: int = 0
    tail: list[int] = field(default_factory=list)
    transposed: bool = False

    @property
    def in_text(self) -> bool:
        return self.pos < 0


class FreeFormConstraint:
    """The constraint for one (H, W, think, transpose) request; holds the mask table on ``device``.

    ``transpose`` (with H ≠ W): the output grid may be the source's H×W or the transposed W×H, the model
    choosing. The two image templates share their tokens up to the first header token where "H*W" and
    "W*H" differ (``choice_pos``, template entry ``CHOICE``: both tokens allowed, nothing else); the
    template lists the source-shaped branch first and, from ``turn_start`` on, the rest of the transposed
    branch (W rows of H visual tokens). A state moves to ``turn_start`` when it writes the transposed
    token at ``choice_pos``, else to the next position; so each position belongs to one branch and keeps
    one mask row and one set of grid features, for sampling and replay alike.
    """

    def __init__(
        self,
        tok: Any,
        h: int,
        w: int,
        think: bool,
        vocab_size: int | None = None,
        max_new_tokens: int | None = None,
        device: torch.device | str | None = None,
        transpose: bool = False,
    ):
        sp: SpecialIds = special_ids(tok)
        if h < 1 or w < 1:
            raise ValueError(f"grid must be at least 1*1, got {h}*{w}")
        self.sp, self.h, self.w, self.think = sp, h, w, think
        self.transpose = bool(transpose) and h != w
        self.shapes = output_shapes((h, w), self.transpose)
        self.vocab_size = int(vocab_size or sp.vocab_size)
        if self.vocab_size < sp.vocab_size:
            raise ValueError(f"vocab_size {self.vocab_size} is smaller than the tokenizer's {sp.vocab_size}")
        prefix = list(sp.think_end_ids) if think else []
        if think and not prefix:
            raise ValueError("the tokenizer cannot write THINK_END")
        parts = [image_part(sp, *hw) for hw in self.shapes]
        self._build_template(prefix, parts)
        self.image_len = max(len(p) for p in parts)

        if max_new_tokens is None:
            max_new_tokens = self.image_len + (DEFAULT_MAX_REASONING + len(prefix) if think else 0)
        need = self.image_len + len(prefix)
        if max_new_tokens < need:
            raise ValueError(f"max_new_tokens={max_new_tokens} is too small: a {h}*{w} image needs {need} tokens")
        self.max_new_tokens = int(max_new_tokens)
        # Free text tokens allowed before THINK_END is forced.
        self.max_reasoning = self.max_new_tokens - need if think else 0

        self._grid_features(parts)
        self._mask_table(device)

    # -- construction -------------------------------------------------------------------------------
    def _build_template(self, prefix: list[int], parts: list[list[int]]) -> None:
        """The flat template (source branch, then the transposed branch's own tail), the position that
        follows each one, and each branch's positions in order."""
        self.image_offset = len(prefix)
        self.template: list[int] = prefix + parts[0]
        self.choice_pos, self.choice_tokens = -1, ()
        self.turn_start = len(self.template)
        branches = [list(range(len(self.template)))]
        if len(parts) == 2:
            k = _first_difference(parts[0], parts[1])
            self.choice_pos = len(prefix) + k
            self.choice_tokens = (parts[0][k], parts[1][k])
            self.template[self.choice_pos] = CHOICE
            self.template += parts[1][k + 1 :]
            branches.append(list(range(self.choice_pos + 1)) + list(range(self.turn_start, len(self.template))))
        self.end = len(self.template)
        self._branches = branches
        self._next = list(range(1, self.end + 1))
        self._next[self.turn_start - 1] = self.end  # the source branch ends there
        self._last_free = [0] * self.end
        for positions in reversed(branches):  # shared positions keep the source branch's value
            last = max(p for p in positions if self.template[p] == VIS)
            for p in positions:
                self._last_free[p] = last

    def _grid_features(self, parts: list[list[int]]) -> None:
        """(image, row, col) of each template position (target image = image 2; see ``grid_positions``)."""
        feat = torch.zeros(3, self.end, dtype=torch.long)
        for (h, w), part, positions in zip(self.shapes, parts, self._branches, strict=True):
            first = self.image_offset + part.index(self.sp.img_token) + 1  # the grid's first token
            for i in range(h * (w + 1)):
                r, c = divmod(i, w + 1)
                feat[:, positions[first + i]] = torch.tensor([2, r, c])
        self.feat_image, self.feat_row, self.feat_col = feat[0], feat[1], feat[2]

    def _mask_table(self, device: torch.device | str | None) -> None:
        """Row 0 free text, row 1 visual, one row per distinct forced token, and a row for the choice."""
        sp = self.sp
        forced = sorted({t for t in self.template if t >= 0})
        row_of_forced = {t: 2 + i for i, t in enumerate(forced)}
        choice_row = 2 + len(forced)
        self.choice_row = choice_row if self.choice_tokens else -1
        row_of = {VIS: VISUAL_ROW, CHOICE: choice_row, **row_of_forced}
        self.row_of_pos = torch.tensor([row_of[t] for t in self.template])
        self._row_of_pos_list = self.row_of_pos.tolist()
        masks = torch.full((choice_row + (1 if self.choice_tokens else 0), self.vocab_size), float("-inf"))
        text_ok = torch.ones(self.vocab_size, dtype=torch.bool)
        text_ok[sp.vocab_size :] = False  # rows the LM has but the tokenizer cannot decode
        text_ok[sp.visual_ids] = False
        text_ok[list(sp.structural)] = False
        if len(sp.think_end_ids) == 1:
            text_ok[sp.think_end_ids[0]] = True
        masks[TEXT_ROW, text_ok] = 0.0
        masks[VISUAL_ROW, sp.visual_ids] = 0.0
        for t, r in row_of_forced.items():
            masks[r, t] = 0.0
        if self.choice_tokens:
            masks[choice_row, list(self.choice_tokens)] = 0.0
        self._masks_cpu = masks
        self.masks = masks.to(device) if device is not None else masks
        self.forced_of_row = torch.full((masks.shape[0],), -1, dtype=torch.long)
        for t, r in row_of_forced.items():
            self.forced_of_row[r] = t
        self._allowed = [m.isfinite().nonzero().squeeze(1) for m in masks]

    def chosen(self, rows: torch.Tensor) -> torch.Tensor:
        """Which mask ``rows`` (from ``replay``) are the model's choices: free text, visual tokens and the
        header choice. The other (forced) tokens have log-prob 0 and carry no gradient."""
        return (rows == TEXT_ROW) | (rows == VISUAL_ROW) | (rows == self.choice_row)

    # -- one candidate's state machine ------------------------------------------------------------
    def start(self) -> State:
        if self.think and self.max_reasoning > 0:
            return State(pos=-1)
        return State(pos=0)

    def allows(self, row: int, token: int) -> bool:
        """Whether ``token`` may be generated where mask row ``row`` applies."""
        return 0 <= token < self.vocab_size and bool(torch.isfinite(self._masks_cpu[row, token]))

    def mask_row(self, s: State) -> int:
        return TEXT_ROW if s.pos < 0 else self._row_of_pos_list[s.pos]

    def forced(self, s: State) -> int | None:
        """The token this state forces, or None when the model chooses (free text / visual / the header choice)."""
        if s.pos < 0:
            return None
        t = self.template[s.pos]
        return None if t < 0 else t

    def last_free(self, pos: int) -> int:
        """The last position the model chooses on the branch of template position ``pos`` (the source
        branch's before the header choice)."""
        return self._last_free[pos]

    def only_forced_left(self, s: State) -> bool:
        """True when every remaining token is forced (the EOF IMG_END EOS tail)."""
        return s.pos >= self.end or (s.pos >= 0 and s.pos > self._last_free[s.pos])

    def grid_shape(self, s: State) -> tuple[int, int]:
        """(rows, cols) of the grid this state writes: the transposed shape once it chose "W*H"."""
        return self.shapes[1] if s.transposed else self.shapes[0]

    def features(self, s: State) -> tuple[int, int, int]:
        """(image, row, col) grid features of the token generated in state ``s``."""
        if s.pos < 0:
            return 0, 0, 0
        return int(self.feat_image[s.pos]), int(self.feat_row[s.pos]), int(self.feat_col[s.pos])

    def advance(self, s: State, token: int) -> bool:
        """Move ``s`` past ``token``; returns True when the sequence is complete (EOS emitted)."""
        if s.pos < 0:
            s.n_text += 1
            end = self.sp.think_end_ids
            s.tail.append(token)
            if len(s.tail) > len(end):
                del s.tail[0]
            if tuple(s.tail) == end:
                s.pos = self.image_offset
            elif s.n_text >= self.max_reasoning:
                # Reasoning budget spent: force THINK_END, continuing a marker already begun.
                k = next((k for k in range(len(end) - 1, 0, -1) if tuple(s.tail[-k:]) == end[:k]), 0)
                s.pos = k
            return False
        if s.pos == self.choice_pos and token == self.choice_tokens[1]:
            s.transposed = True
            s.pos = self.turn_start
        else:
            s.pos = self._next[s.pos]
        return s.pos >= self.end

    # -- whole sequences (training, checks) -------------------------------------------------------
    def replay(self, gen_ids: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mask rows and grid features for every position of a finished generation.

        Returns (mask_rows, image, row, col), LongTensors of len(gen_ids). ValueError if a token was
        not allowed at its position or the sequence does not end exactly at EOS.
        """
        ids = gen_ids.tolist() if isinstance(gen_ids, torch.Tensor) else [int(x) for x in gen_ids]
        return tuple(t[0] for t in self.replay_batch([ids]))  # type: ignore[return-value]

    def replay_batch(self, gens: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``replay`` for a batch: (mask_rows, image, row, col), each (B, longest), zero past each end."""
        # Only the reasoning needs the state machine; from THINK_END on, token j sits at template position
        # pos0 + j - n_text (moved to the transposed branch's tail after the header choice when it took
        # "W*H"), so the rest is a gather from the template's tables (training replays ~10^5 tokens a step,
        # and per-sequence tensor work dominated a GPU step).
        starts = [self._replay_start(ids, b if len(gens) > 1 else None) for b, ids in enumerate(gens)]
        lengths = [len(ids) for ids in gens]
        n_b, g_max = len(gens), max(lengths)
        tok_np = np.full((n_b, g_max), self.sp.pad, dtype=np.int64)
        for b, ids in enumerate(gens):
            tok_np[b, : len(ids)] = ids
        tok = torch.from_numpy(tok_np)
        j = torch.arange(g_max).unsqueeze(0)
        n_text = torch.tensor([s[0] for s in starts]).unsqueeze(1)
        pos0 = torch.tensor([s[1] for s in starts]).unsqueeze(1)
        shift = torch.tensor([self.turn_start - self.choice_pos - 1 if s[2] else 0 for s in starts]).unsqueeze(1)
        valid = j < torch.tensor(lengths).unsqueeze(1)
        in_template = (j >= n_text) & valid
        # index `end` is a sentinel entry: text / padding positions read row 0 (TEXT_ROW) and features 0
        pos = torch.where(in_template, pos0 + j - n_text, torch.full_like(j, self.end))
        pos = torch.where(in_template & (pos > self.choice_pos), pos + shift, pos)
        pad1 = torch.zeros(1, dtype=torch.long)
        mask_rows = torch.cat([self.row_of_pos, pad1])[pos]
        feats = [torch.cat([f, pad1])[pos] for f in (self.feat_image, self.feat_row, self.feat_col)]
        ok = self._masks_cpu[mask_rows, tok.clamp(0, self.vocab_size - 1)].isfinite() & (tok < self.vocab_size)
        bad = valid & ~ok
        if bool(bad.any()):
            b, i = (int(x) for x in bad.nonzero()[0])
            where = f" (sequence {b})" if len(gens) > 1 else ""
            raise ValueError(f"token {gens[b][i]} at position {i} is not allowed by the constraint{where}")
        return (mask_rows, *feats)

    def _replay_start(self, ids: list[int], b: int | None) -> tuple[int, int, bool]:
        """(reasoning tokens, template position of the token after them, whether the header chose "W*H") of
        one finished generation; ValueError when it does not end exactly at its branch's EOS."""
        where = f" (sequence {b})" if b is not None else ""
        s = self.start()
        i = 0
        single_end = self.sp.think_end_ids[0] if len(self.sp.think_end_ids) == 1 else None
        if s.pos < 0 and single_end is not None:
            # one-token THINK_END within the budget: the state machine would stop right after it
            try:
                k = ids.index(single_end, 0, self.max_reasoning)
                i, s.pos = k + 1, self.image_offset
            except ValueError:
                pass
        while i < len(ids) and s.pos < 0:
            self.advance(s, ids[i])
            i += 1
        n_text, pos0, rest = i, s.pos, len(ids) - i
        at_choice = n_text + self.choice_pos - pos0
        turned = self.transpose and 0 <= at_choice < len(ids) and ids[at_choice] == self.choice_tokens[1]
        span = len(self._branches[1 if turned else 0])  # template positions along the branch taken
        if pos0 < 0 or pos0 + rest < span:
            raise ValueError(f"generation of {len(ids)} tokens ends before EOS{where}")
        if pos0 + rest > span:
            raise ValueError(f"tokens after EOS at position {n_text + span - pos0}{where}")
        return n_text, pos0, turned

    def additive_masks(self, gen_ids: list[int] | torch.Tensor) -> torch.Tensor:
        """(T, vocab) additive mask for every position of a finished generation (small vocabularies)."""
        rows = self.replay(gen_ids)[0]
        return self.masks[rows.to(self.masks.device)]

    # -- transformers' generate ------------------------------------------------------------------
    def prefix_allowed_tokens_fn(self, prompt_len: int) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """An equivalent constraint for ``generate(prefix_allowed_tokens_fn=...)``.

        Keeps one state per batch row and advances it by the tokens appended since the last call, so
        each call costs O(1) (the returned allowed-id tensors are precomputed). After EOS it allows
        PAD only (generate pads finished rows).
        """
        states: dict[int, tuple[int, State, bool]] = {}
        pad_only = torch.tensor([self.sp.pad])

        def fn(batch_id: int, sent: torch.Tensor) -> torch.Tensor:
            n = int(sent.shape[-1]) - prompt_len
            seen, s, done = states.get(batch_id, (0, self.start(), False))
            if n < seen:  # a new generate call reuses the function
                seen, s, done = 0, self.start(), False
            if seen < n:
                for t in sent[prompt_len + seen : prompt_len + n].tolist():
                    if done:
                        break
                    done = self.advance(s, t)
                seen = n
            states[batch_id] = (seen, s, done)
            return pad_only if done else self._allowed[self.mask_row(s)]

        return fn


# -- one shared cache ----------------------------------------------------------------------------------

_CACHE_PER_TOKENIZER = 32  # most recent constraints kept per tokenizer (a mask table is rows × vocab floats)
_cache: weakref.WeakKeyDictionary[Any, OrderedDict[tuple, FreeFormConstraint]] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def constraint_for(tok: Any, h: int, w: int, think: bool, vocab_size: int | None = None,
                   max_new_tokens: int | None = None, device: torch.device | str | None = None,
                   transpose: bool = False) -> FreeFormConstraint:
    """``FreeFormConstraint(tok, h, w, think, ...)``, built once and shared by every caller.

    A constraint holds no per-candidate state (that is ``State``), so the sampler, log-probs, training
    and the feedback pairs all reuse one per request shape. Kept while ``tok`` lives, the most recent
    ones per tokenizer; safe to call from several threads.
    """
    transpose = bool(transpose) and h != w  # a square grid has one header: one constraint either way
    key = (int(h), int(w), bool(think), vocab_size and int(vocab_size), max_new_tokens and int(max_new_tokens),
           None if device is None else str(torch.device(device)), transpose)
    with _cache_lock:
        per_tok = _cache.setdefault(tok, OrderedDict())
        con = per_tok.get(key)
        if con is not None:
            per_tok.move_to_end(key)
            return con
    con = FreeFormConstraint(tok, h, w, think, vocab_size=vocab_size, max_new_tokens=max_new_tokens, device=device,
                             transpose=transpose)
    with _cache_lock:
        per_tok = _cache.setdefault(tok, OrderedDict())
        con = per_tok.setdefault(key, con)
        per_tok.move_to_end(key)
        while len(per_tok) > _CACHE_PER_TOKENIZER:
            per_tok.popitem(last=False)
    return con
