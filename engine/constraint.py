"""The free-form output constraint of EARL as a small state machine with precomputed additive masks.

What may be generated after the prompt (docs/ARCHITECTURE.md §2):
- think mode: free text (any token that is neither visual nor structural) until THINK_END; when the
  reasoning budget runs out, THINK_END is forced;
- then IMG_START, the "H*W" header and IMG_TOKEN, forced (without think: right away);
- exactly H rows of W visual tokens, each row followed by a forced EOL;
- EOF, IMG_END, EOS, forced.

Everything after the free text is a fixed *template*: each position is either one forced token or
"any visual token". So a state is just (position in the template, or -1 in free text), and every
position's mask is one row of a small table ``masks`` (M, vocab) of additive 0/-inf masks: row 0 free
text, row 1 visual, one row per distinct forced token. The sampler gathers rows of this table; training
replays a finished sequence into the same row indices (``replay``), so both use identical masks.
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

from engine.layout import SpecialIds, special_ids

TEXT_ROW = 0
VISUAL_ROW = 1
VIS = -1  # template entry: any visual token

DEFAULT_MAX_REASONING = 512  # free reasoning tokens when the caller sets no budget


def image_template_length(h: int, w: int, header_len: int) -> int:
    """Tokens of IMG_START header IMG_TOKEN rows EOF IMG_END EOS."""
    return 1 + header_len + 1 + h * (w + 1) + 3


@dataclass
class State:
    """Where one candidate is: ``pos`` -1 while in free text, else an index into the template."""

    pos: int
    n_text: int = 0
    tail: list[int] = field(default_factory=list)

    @property
    def in_text(self) -> bool:
        return self.pos < 0


class FreeFormConstraint:
    """The constraint for one (H, W, think) request; holds the mask table on ``device``."""

    def __init__(
        self,
        tok: Any,
        h: int,
        w: int,
        think: bool,
        vocab_size: int | None = None,
        max_new_tokens: int | None = None,
        device: torch.device | str | None = None,
    ):
        sp: SpecialIds = special_ids(tok)
        if h < 1 or w < 1:
            raise ValueError(f"grid must be at least 1*1, got {h}*{w}")
        self.sp, self.h, self.w, self.think = sp, h, w, think
        self.vocab_size = int(vocab_size or sp.vocab_size)
        if self.vocab_size < sp.vocab_size:
            raise ValueError(f"vocab_size {self.vocab_size} is smaller than the tokenizer's {sp.vocab_size}")
        header = sp.header_ids(h, w)
        image_part = [sp.img_start, *header, sp.img_token]
        for _ in range(h):
            image_part += [VIS] * w + [sp.eol]
        image_part += [sp.eof, sp.img_end, sp.eos]
        prefix = list(sp.think_end_ids) if think else []
        if think and not prefix:
            raise ValueError("the tokenizer cannot write THINK_END")
        self.template: list[int] = prefix + image_part
        self.image_offset = len(prefix)
        self.image_len = len(image_part)
        self.last_free_pos = max(i for i, t in enumerate(self.template) if t == VIS)

        if max_new_tokens is None:
            max_new_tokens = self.image_len + (DEFAULT_MAX_REASONING + len(prefix) if think else 0)
        need = self.image_len + len(prefix)
        if max_new_tokens < need:
            raise ValueError(f"max_new_tokens={max_new_tokens} is too small: a {h}*{w} image needs {need} tokens")
        self.max_new_tokens = int(max_new_tokens)
        # Free text tokens allowed before THINK_END is forced.
        self.max_reasoning = self.max_new_tokens - need if think else 0

        # Grid features of each template position (target image = image 2; see grid_positions).
        n = len(self.template)
        feat = torch.zeros(3, n, dtype=torch.long)
        p = self.image_offset + 2 + len(header)
        for r in range(h):
            for c in range(w + 1):
                feat[:, p] = torch.tensor([2, r, c])
                p += 1
        self.feat_image, self.feat_row, self.feat_col = feat[0], feat[1], feat[2]

        # Mask table: row 0 free text, row 1 visual, then one row per distinct forced token.
        forced = sorted({t for t in self.template if t != VIS})
        row_of_forced = {t: 2 + i for i, t in enumerate(forced)}
        self.row_of_pos = torch.tensor([VISUAL_ROW if t == VIS else row_of_forced[t] for t in self.template])
        self._row_of_pos_list = self.row_of_pos.tolist()
        neg = float("-inf")
        masks = torch.full((2 + len(forced), self.vocab_size), neg)
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
        self._masks_cpu = masks
        self.masks = masks.to(device) if device is not None else masks
        self.forced_of_row = torch.full((masks.shape[0],), -1, dtype=torch.long)
        for t, r in row_of_forced.items():
            self.forced_of_row[r] = t
        self._allowed = [m.isfinite().nonzero().squeeze(1) for m in masks]

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
        """The token this state forces, or None when the model chooses (free text / visual)."""
        if s.pos < 0:
            return None
        t = self.template[s.pos]
        return None if t == VIS else t

    def only_forced_left(self, s: State) -> bool:
        """True when every remaining token is forced (the EOF IMG_END EOS tail)."""
        return s.pos > self.last_free_pos

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
        s.pos += 1
        return s.pos >= len(self.template)

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
        # pos0 + j - n_text, so the rest is a gather from the template's tables (training replays ~10^5
        # tokens a step, and per-sequence tensor work dominated a GPU step).
        end = len(self.template)

        def which(b: int) -> str:
            return f" (sequence {b})" if len(gens) > 1 else ""

        lengths, starts = [], []
        single_end = self.sp.think_end_ids[0] if len(self.sp.think_end_ids) == 1 else None
        for b, ids in enumerate(gens):
            s = self.start()
            i = 0
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
            if pos0 < 0 or pos0 + rest < end:
                raise ValueError(f"generation of {len(ids)} tokens ends before EOS{which(b)}")
            if pos0 + rest > end:
                raise ValueError(f"tokens after EOS at position {n_text + end - pos0}{which(b)}")
            lengths.append(len(ids))
            starts.append((n_text, pos0))
        n_b, g_max = len(gens), max(lengths)
        tok_np = np.full((n_b, g_max), self.sp.pad, dtype=np.int64)
        for b, ids in enumerate(gens):
            tok_np[b, : len(ids)] = ids
        tok = torch.from_numpy(tok_np)
        j = torch.arange(g_max).unsqueeze(0)
        n_text = torch.tensor([s[0] for s in starts]).unsqueeze(1)
        pos0 = torch.tensor([s[1] for s in starts]).unsqueeze(1)
        valid = j < torch.tensor(lengths).unsqueeze(1)
        in_template = (j >= n_text) & valid
        # index `end` is a sentinel entry: text / padding positions read row 0 (TEXT_ROW) and features 0
        pos = torch.where(in_template, pos0 + j - n_text, torch.full_like(j, end))
        pad1 = torch.zeros(1, dtype=torch.long)
        mask_rows = torch.cat([self.row_of_pos, pad1])[pos]
        feats = [torch.cat([f, pad1])[pos] for f in (self.feat_image, self.feat_row, self.feat_col)]
        ok = self._masks_cpu[mask_rows, tok.clamp(0, self.vocab_size - 1)].isfinite() & (tok < self.vocab_size)
        bad = valid & ~ok
        if bool(bad.any()):
            b, i = (int(x) for x in bad.nonzero()[0])
            raise ValueError(f"token {gens[b][i]} at position {i} is not allowed by the constraint{which(b)}")
        return (mask_rows, *feats)

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
                   max_new_tokens: int | None = None, device: torch.device | str | None = None
                   ) -> FreeFormConstraint:
    """``FreeFormConstraint(tok, h, w, think, ...)``, built once and shared by every caller.

    A constraint holds no per-candidate state (that is ``State``), so the sampler, log-probs, training
    and the feedback pairs all reuse one per request shape. Kept while ``tok`` lives, the most recent
    ones per tokenizer; safe to call from several threads.
    """
    key = (int(h), int(w), bool(think), vocab_size and int(vocab_size), max_new_tokens and int(max_new_tokens),
           None if device is None else str(torch.device(device)))
    with _cache_lock:
        per_tok = _cache.setdefault(tok, OrderedDict())
        con = per_tok.get(key)
        if con is not None:
            per_tok.move_to_end(key)
            return con
    con = FreeFormConstraint(tok, h, w, think, vocab_size=vocab_size, max_new_tokens=max_new_tokens, device=device)
    with _cache_lock:
        per_tok = _cache.setdefault(tok, OrderedDict())
        con = per_tok.setdefault(key, con)
        per_tok.move_to_end(key)
        while len(per_tok) > _CACHE_PER_TOKENIZER:
            per_tok.popitem(last=False)
    return con
