"""Rating bookkeeping for the UI: saving a click as a rating, its label, readiness for fine-tuning and
pair selection. Gradio-free.

The thresholds are rules of thumb for LoRA fine-tuning of a small model from human feedback
(DPO on pairs, KTO on thumbs, a Bradley–Terry reward model on pairs); fewer examples mostly make the
run overfit the raters' first few preferences. The training code may use its own.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from feedback.store import Rating, Store

READY = {
    "dpo_pairs": 100,  # decided A/B pairs (+ best-of-N expansions) for a first DPO run
    "kto_thumbs": 100,  # thumbs in total …
    "kto_min_each": 20,  # … with at least this many of each sign
    "reward_model_pairs": 300,
}


def readiness(counts: dict[str, int]) -> dict[str, dict[str, int | bool]]:
    """For each method: what we have, what is needed, how many more, ready or not."""
    pairs = int(counts.get("preference_pairs", 0))
    up, down = int(counts.get("thumbs_up", 0)), int(counts.get("thumbs_down", 0))
    kto_more = max(READY["kto_thumbs"] - up - down, READY["kto_min_each"] - up, READY["kto_min_each"] - down, 0)
    out = {
        "dpo": {"have": pairs, "need": READY["dpo_pairs"], "more": max(READY["dpo_pairs"] - pairs, 0)},
        "kto": {"have": up + down, "need": READY["kto_thumbs"], "more": kto_more},
        "reward_model": {
            "have": pairs, "need": READY["reward_model_pairs"],
            "more": max(READY["reward_model_pairs"] - pairs, 0),
        },
    }
    for v in out.values():
        v["ready"] = v["more"] == 0
    return out


def counts_markdown(counts: dict[str, int]) -> str:
    r = readiness(counts)

    def line(name: str, key: str, what: str) -> str:
        v = r[key]
        if v["ready"]:
            return f"- **{name}**: ready ({v['have']} {what})"
        return f"- **{name}**: {v['have']}/{v['need']} {what} — **{v['more']} more** needed"

    return "\n".join(
        [
            f"**Collected:** {counts.get('edits', 0)} edits · {counts.get('candidates', 0)} candidates · "
            f"{counts.get('pairs_decided', 0)} A/B decisions ({counts.get('pairs_undecided', 0)} ties/both bad) · "
            f"{counts.get('best_of_n', 0)} best-of-N · thumbs {counts.get('thumbs_up', 0)} up / "
            f"{counts.get('thumbs_down', 0)} down · {counts.get('stars', 0)} star ratings · "
            f"{counts.get('raters', 0)} rater(s)",
            "",
            line("DPO (preference pairs)", "dpo", "pairs"),
            line("KTO (thumbs)", "kto", "thumbs, both kinds"),
            line("Reward model", "reward_model", "pairs"),
        ]
    )


def pick_pair(candidate_ids: Sequence[int], rng: random.Random, avoid: Sequence[int] | None = None) -> list[int]:
    """Two different candidates in a random on-screen order (position bias is then measurable:
    the shown order is stored with the rating). Prefers a pair different from ``avoid``."""
    ids = list(dict.fromkeys(candidate_ids))
    if len(ids) < 2:
        return []
    for _ in range(8):
        pair = rng.sample(ids, 2)
        if avoid is None or sorted(pair) != sorted(avoid) or len(ids) == 2:
            return pair
    return pair


def rating_label(kind: str, value: str, cid: int) -> str:
    """A rating in words, as seen from candidate ``cid``."""
    if kind == "thumb":
        return "thumbs up" if value == "up" else "thumbs down"
    if kind == "star":
        return "★" * int(value)
    if kind == "best_of_n":
        return "best of all" if int(value) == cid else "not best"
    return {"A": "A/B: A", "B": "A/B: B", "tie": "A/B: tie", "both_bad": "A/B: both bad"}.get(value, value)


def standing_label(r: Rating, cid: int) -> str:
    """A rating as seen from candidate ``cid`` (an A/B decision: did it win?)."""
    if r.kind == "pair" and r.value in ("A", "B"):
        return "A/B: won" if r.candidate_ids["AB".index(r.value)] == cid else "A/B: lost"
    return rating_label(r.kind, r.value, cid)


def save_rating(store: Store, rater: str, kind: str, value: Any, shown: Sequence[int], selected: int,
                pair: Sequence[int]) -> tuple[int, str]:
    """Store one click on a rating button about the ``shown`` candidates (``selected`` the one in view,
    ``pair`` the A/B pair on screen, A first); returns (rating id, what was saved, in words).

    Raises ``ValueError`` when the click needs more candidates than are shown, ``StoreError`` when the
    store refuses it."""
    ids = list(shown)
    if kind in ("thumb", "star"):
        rid = store.add_rating(rater=rater, kind=kind, value=value, candidate_ids=[selected])
        return rid, f"{rating_label(kind, str(value), selected)} for candidate #{ids.index(selected) + 1}"
    if kind == "best_of_n":
        if len(ids) < 2:
            raise ValueError("Best-of-N needs at least two candidates.")
        rid = store.add_rating(rater=rater, kind=kind, value=selected, candidate_ids=ids, shown_order=ids)
        return rid, f"candidate #{ids.index(selected) + 1} is the best of {len(ids)}"
    if len(pair) != 2:
        raise ValueError("A/B needs at least two candidates.")
    # candidate_ids = [A, B] as shown (A left): the shown order is part of the data.
    rid = store.add_rating(rater=rater, kind="pair", value=value, candidate_ids=list(pair), shown_order=list(pair))
    return rid, rating_label("pair", value, 0)
