"""Turn the feedback store's rated candidates into token sequences for training (DPO, KTO, reward model).

A candidate row holds the exact generated token ids; the prompt is rebuilt from the stored source image
(the image the model saw, re-encoded by the bundle's VQ — deterministic) and the instruction, with
``engine.layout.build_prompt`` in the candidate's think mode. Candidates whose tokens do not replay
under the bundle's constraint (another tokenizer, a truncated generation) are skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.bundle import transpose_default
from engine.constraint import constraint_for
from engine.layout import build_prompt, output_shapes


@dataclass
class Example:
    """One candidate as the model sees it."""

    candidate_id: int
    prompt_ids: list[int]
    gen_ids: list[int]
    h: int
    w: int
    think: bool
    source_hash: str
    instruction: str
    transpose: bool = False  # replayed with the transposed header allowed (engine.constraint)

    @property
    def shape_key(self) -> tuple[int, int, bool, bool]:
        """What selects the constraint its tokens replay under: (source rows, columns, think, transpose)."""
        return (self.h, self.w, self.think, self.transpose)


class StoreExamples:
    """Builds (and caches) ``Example``s for one bundle from one store; ``skipped`` counts reasons."""

    def __init__(self, bundle: Any, store: Any) -> None:
        self.bundle, self.store = bundle, store
        self._grids: dict[str, np.ndarray] = {}
        self._examples: dict[int, Example | None] = {}
        self.skipped: Counter[str] = Counter()

    def source_grid(self, source_hash: str) -> np.ndarray:
        if source_hash not in self._grids:
            img = self.store.load_image(source_hash)
            self._grids[source_hash] = self.bundle.vq.encode([img])[0].astype(np.int64)
        return self._grids[source_hash]

    def example(self, cand: Any) -> Example | None:
        """The candidate as an ``Example``, or None (reason counted in ``skipped``)."""
        if cand.id in self._examples:
            return self._examples[cand.id]
        ex = self._build(cand)
        self._examples[cand.id] = ex
        return ex

    def _build(self, cand: Any) -> Example | None:
        tok = self.bundle.tokenizer
        vocab = self.bundle.lm.config.vocab_size if hasattr(self.bundle.lm, "config") else len(tok)
        if not cand.tokens or max(cand.tokens) >= vocab:
            self.skipped["tokens outside this bundle's vocabulary"] += 1
            return None
        try:
            grid = self.source_grid(cand.source_hash)
        except (OSError, ValueError):
            self.skipped["source image unreadable or wrong size"] += 1
            return None
        h, w = grid.shape
        # the constraint it was sampled under (settings["transpose"], else the bundle's own choice); a candidate
        # turned on its side was sampled with the transposed header allowed
        turned = (cand.grid_h, cand.grid_w) == (w, h) != (h, w)
        transpose = bool((cand.settings or {}).get("transpose", transpose_default(self.bundle))) or turned
        if (cand.grid_h, cand.grid_w) not in (*output_shapes((h, w), transpose), (0, 0)):
            self.skipped["source grid differs from the candidate's"] += 1
            return None
        think = bool(cand.think)
        n = len(cand.tokens)
        # think mode: the sampler's budget must at least cover this generation
        con = constraint_for(tok, h, w, think, vocab, n if think else None, transpose=transpose)
        try:
            con.replay(list(cand.tokens))
        except ValueError:
            self.skipped["tokens break the constraint (other tokenizer or unfinished)"] += 1
            return None
        prompt = build_prompt(tok, grid, cand.instruction, think)
        return Example(cand.id, prompt, list(cand.tokens), h, w, think, cand.source_hash, cand.instruction, transpose)


def graded_pairs(graded: list[tuple[Any, float, str]]) -> list[tuple[Any, Any, str]]:
    """Pairs (better, worse, rater) from per-candidate grades ``(candidate, grade, rater)``: within one
    rater's grades of the same source image and instruction, a higher grade beats a lower one (equal
    grades, other photos or other raters: no pair)."""
    groups: dict[tuple[str, str, str], list[tuple[Any, float]]] = {}
    for cand, grade, rater in graded:
        groups.setdefault((rater, cand.source_hash, cand.instruction), []).append((cand, grade))
    out = []
    for (rater, _, _), items in groups.items():
        for i, (a, ga) in enumerate(items):
            for b, gb in items[i + 1:]:
                if ga > gb:
                    out.append((a, b, rater))
                elif gb > ga:
                    out.append((b, a, rater))
    return out


def star_pairs(stars: list[Any]) -> list[tuple[Any, Any, str]]:
    """Pairs (better, worse, rater) from star ratings: more stars beat fewer, within one rater's edit."""
    return graded_pairs([(s.candidate, s.stars, s.rater) for s in stars])


def thumb_pairs(thumbs: list[Any]) -> list[tuple[Any, Any, str]]:
    """Pairs (up, down, rater) from thumbs: within one rater's thumbs of one edit's candidates, each
    thumbed-up candidate beats each thumbed-down one. A person who thumbs several candidates of an edit
    has compared them, so DPO learns from thumbs too, not only KTO."""
    return graded_pairs([(t.candidate, float(t.up), t.rater) for t in thumbs])


def single_labels(store: Any) -> list[tuple[Any, bool, str]]:
    """Every rating that says a candidate is good or bad on its own, as ``(candidate, good, source)``:
    thumbs; 4–5 stars good and 1–2 bad (3: neither); a best-of-N pick good (the ones not picked may be good
    too: no label). A/B answers compare two candidates and say neither is good or bad by itself: none."""
    out = [(t.candidate, bool(t.up), "thumbs") for t in store.thumbs()]
    out += [(s.candidate, s.stars >= 4, "stars") for s in store.stars() if s.stars != 3]
    picks = {p.rating_id: p.chosen for p in store.preference_pairs() if p.kind == "best_of_n"}
    out += [(c, True, "best_of_n") for c in picks.values()]
    return out


def rating_groups(store: Any) -> list[list[tuple[Any, float]]]:
    """Candidates a person graded side by side, with their grades, for learning each candidate against the
    others of its group (as GRPO does with a reward): one rater's thumbs of one edit (up 1, down 0) form a
    group, so do their stars (1-5); a decided A/B answer is a group of two (1, 0), a best-of-N pick one of
    the shown candidates (the pick 1, the others 0)."""
    groups: dict[tuple, list[tuple[Any, float]]] = {}
    for form, graded in (("thumb", [(t.candidate, float(t.up), t.rater) for t in store.thumbs()]),
                         ("star", [(s.candidate, float(s.stars), s.rater) for s in store.stars()])):
        for cand, grade, rater in graded:
            groups.setdefault((form, rater, cand.source_hash, cand.instruction), []).append((cand, grade))
    for p in store.preference_pairs():
        g = groups.setdefault((p.kind, p.rating_id), [(p.chosen, 1.0)])
        g.append((p.rejected, 0.0))
    return list(groups.values())


def rated_pairs(store: Any, use_stars: bool = True) -> list[tuple[Any, Any, str]]:
    """Every (chosen, rejected, source) candidate pair: A/B and best-of-N pairs, plus the pairs that
    per-candidate ratings of one edit imply (stars, thumbs) when ``use_stars``."""
    pairs = [(p.chosen, p.rejected, p.kind) for p in store.preference_pairs()]
    if use_stars:
        pairs += [(a, b, "stars") for a, b, _ in star_pairs(store.stars())]
        pairs += [(a, b, "thumbs") for a, b, _ in thumb_pairs(store.thumbs())]
    return pairs
