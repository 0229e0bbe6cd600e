"""Simulated raters: the programmatic verifier, with noise, rating candidates through the store's API.

Used for the "DPO from ratings improves the model" experiment (``research.experiments dpo-simulated``)
and in tests. Candidates are generated the way the studio does (``engine.edit_blocking``) and recorded
with ``feedback.record.record_edit`` — exact tokens, log-probs, seeds, settings — then rated with
``Store.add_rating`` as A/B pairs, thumbs or stars. A rater sees the verifier's overall score (0–10) plus
Gaussian noise of ``noise`` points (people disagree and make mistakes), so preferences are right most
of the time, not always.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.image_io import fit_to_area


@dataclass
class RatedEdit:
    """One suite sample edited into ``len(ids)`` stored candidates, with their verifier scores."""

    sample: dict
    ids: list[int]
    scores: list[float]


def generate(store: Any, bundle: Any, samples: Sequence[dict], n: int = 4, think: bool = False, seed: int = 0,
             temperature: float = 1.0, top_k: int = 0, progress: bool = True) -> list[RatedEdit]:
    """Edit each suite sample into ``n`` candidates with ``bundle``, store them, score them (verifier).

    Float32 decoding weights (the studio's CPU default, half precision, is exact only for bfloat16
    weights): the stored log-probs are then exactly the model's, as training data's should be."""
    import sys

    from tqdm import tqdm

    from engine.api import edit_blocking
    from feedback.record import record_edit
    from training import verifier

    area, sf = bundle.config.image_area, bundle.vq.spatial_factor
    settings = {"think": think, "temperature": temperature, "top_k": top_k, "top_p": 1.0, "source": "simulated",
                "fp16": False}
    out = []
    for k, s in enumerate(tqdm(samples, desc="generate", unit="prompt", disable=not progress, file=sys.stderr,
                               dynamic_ncols=True)):
        src = fit_to_area(s["source"], area, sf)  # the image the model sees, as the studio stores it
        done = edit_blocking(bundle, src, s["instruction"], n=n, think=think, seed=seed + 1000 * k,
                             temperature=temperature, top_k=top_k, preview_every=0, fp16=False)
        ids = record_edit(store, bundle, src, s["instruction"], done, settings)
        scores = [verifier.score(s["source"], d.image, s["target"], s["mask"]).overall for d in done]
        out.append(RatedEdit(s, ids, scores))
    return out


@dataclass
class SimulatedRater:
    """A verifier-backed rater with ``noise`` points of Gaussian noise; ``tie_margin``: noisy scores closer
    than this are called a tie (A/B)."""

    name: str = "sim-rater"
    noise: float = 1.0
    tie_margin: float = 0.0
    seed: int = 0
    rng: random.Random = field(init=False, repr=False)
    # A/B ratings of pairs whose noiseless scores differ, and how many of those picked the better one
    pairs_with_gap: int = field(default=0, init=False)
    pairs_agreeing: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _noisy(self, score: float) -> float:
        return score + self.rng.gauss(0.0, self.noise) if self.noise > 0 else score

    def rate_pairs(self, store: Any, edit: RatedEdit, max_pairs: int | None = None) -> list[int]:
        """A/B ratings of pairs of the edit's candidates (all pairs, or ``max_pairs`` random ones)."""
        pairs = list(itertools.combinations(range(len(edit.ids)), 2))
        self.rng.shuffle(pairs)
        out = []
        for i, j in pairs[:max_pairs]:
            if self.rng.random() < 0.5:  # random on-screen order, as the studio shows them
                i, j = j, i
            a, b = self._noisy(edit.scores[i]), self._noisy(edit.scores[j])
            value = "tie" if abs(a - b) <= self.tie_margin else ("A" if a > b else "B")
            if edit.scores[i] != edit.scores[j]:
                self.pairs_with_gap += 1
                self.pairs_agreeing += value == ("A" if edit.scores[i] > edit.scores[j] else "B")
            ids = [edit.ids[i], edit.ids[j]]
            out.append(store.add_rating(self.name, "pair", value, ids, shown_order=ids))
        return out

    def rate_thumbs(self, store: Any, edit: RatedEdit, threshold: float | None = None) -> list[int]:
        """Thumb up when the noisy score reaches ``threshold`` (None: the median of the edit's scores)."""
        thr = float(np.median(edit.scores)) if threshold is None else threshold
        return [store.add_rating(self.name, "thumb", "up" if self._noisy(s) >= thr else "down", [cid])
                for cid, s in zip(edit.ids, edit.scores, strict=True)]

    def rate_stars(self, store: Any, edit: RatedEdit) -> list[int]:
        """1–5 stars: the noisy 0–10 score mapped linearly."""
        out = []
        for cid, s in zip(edit.ids, edit.scores, strict=True):
            stars = int(min(5, max(1, 1 + round(self._noisy(s) / 10 * 4))))
            out.append(store.add_rating(self.name, "star", stars, [cid]))
        return out


def rate(store: Any, edits: Sequence[RatedEdit], raters: Sequence[SimulatedRater], kinds: Sequence[str] = ("pair",),
         max_pairs: int | None = None) -> dict[str, int]:
    """Every rater rates every edit with each of ``kinds`` (pair, thumb, star); returns counts."""
    counts = {k: 0 for k in kinds}
    for r in raters:
        for e in edits:
            if "pair" in kinds:
                counts["pair"] += len(r.rate_pairs(store, e, max_pairs))
            if "thumb" in kinds:
                counts["thumb"] += len(r.rate_thumbs(store, e))
            if "star" in kinds:
                counts["star"] += len(r.rate_stars(store, e))
    if "pair" in kinds:
        counts["pair_with_gap"] = sum(r.pairs_with_gap for r in raters)
        counts["pair_agreeing"] = sum(r.pairs_agreeing for r in raters)
    return counts
