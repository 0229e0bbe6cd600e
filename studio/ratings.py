"""Rating bookkeeping for the UI: saving a click as a rating, its label, readiness for fine-tuning, pair
selection, and the statistics of the blind A/B (a Wilson 95 % interval on the win rate, so a handful of
lucky rounds is not read as progress). Gradio-free.

The thresholds are rules of thumb for LoRA fine-tuning of a small model from human feedback
(DPO on pairs, KTO on thumbs, a Bradley–Terry reward model on pairs); fewer examples mostly make the
run overfit the raters' first few preferences. The training code may use its own.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from typing import Any

from feedback.store import Rating, Store, standing_key

READY = {
    "dpo_pairs": 100,  # preference pairs (A/B, best-of-N, and those stars and thumbs imply) for a first DPO run
    "kto_thumbs": 100,  # thumbs in total …
    "kto_min_each": 20,  # … with at least this many of each sign
    "reward_model_pairs": 300,
}


def training_pairs(counts: dict[str, int]) -> int:
    """Preference pairs DPO and a reward model learn from: A/B and best-of-N, and those that stars and
    thumbs of one edit's candidates imply."""
    return int(counts.get("preference_pairs", 0)) + int(counts.get("graded_pairs", 0))


def readiness(counts: dict[str, int]) -> dict[str, dict[str, int | bool]]:
    """For each method: what we have, what is needed, how many more, ready or not."""
    pairs = training_pairs(counts)
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


# What the whole loop gave when measured end to end (``python -m benchmarks.feedback_loop``: simulated
# people rate edits in the studio, the one-click default trains, a blind A/B on held-out edits judges);
# each run, with its command, in ``source``. ``measurable``: the A/B's 95 % interval cleared 50 %. The
# figures are run F's, the one with 300 ratings and all its A/B rounds (its DPO ran at beta 0.01; run E
# at the default beta stopped at 101 rounds, no measurable difference either). ``source`` is for the
# project's readers: the page says what was measured in words, not where the notes are.
LOOP_MEASURED: dict[str, Any] = {
    "ratings": 300, "measurable": False, "winrate": 0.492, "ci": (0.436, 0.548),
    "source": "research/feedback-loop.md, run F",
}


def training_ratings(counts: dict[str, int]) -> int:
    """Ratings that stand and can train a model: thumbs, stars, A/B decisions, best-of-N choices."""
    return sum(int(counts.get(k, 0)) for k in ("thumbs_up", "thumbs_down", "stars", "pairs_decided", "best_of_n"))


def expectation(counts: dict[str, int], measured: dict[str, Any] | None = None) -> str:
    """One honest line on what more ratings will do, from the measured loop (``LOOP_MEASURED``), in words
    a studio user can act on: what was measured, how many more ratings to give, how to check the result."""
    m = LOOP_MEASURED if measured is None else measured
    have = training_ratings(counts)
    n = int(m["ratings"])
    seen = ""
    if m.get("winrate") is not None and m.get("ci") is not None:
        seen = (f" (the new model won {m['winrate']:.0%} of the blind A/B, 95 % interval "
                f"{m['ci'][0]:.0%}–{m['ci'][1]:.0%})")
    test = "in a test of the whole loop with simulated raters"
    if m.get("measurable"):
        if have >= n:
            return (f"**What to expect:** {have} ratings — as many as gave a measurable change {test} ({n} "
                    f"ratings{seen}). Train, then check with the Fine-tune tab's blind A/B.")
        return (f"**What to expect:** about **{n - have} more ratings** for a measurable change: {test}, {n} "
                f"ratings gave one{seen}. Rate more edits (Edit or Review & rate tab), train, then check with "
                "the Fine-tune tab's blind A/B.")
    return (f"**What to expect:** {test}, {n} ratings did not yet give a measurable change{seen}. Expect to "
            f"need more than {max(n - have, 0)} more ratings (rate edits in the Edit or Review & rate tab), and "
            "check a trained model with the Fine-tune tab's blind A/B.")


def _count(counts: dict[str, int], key: str, noun: str) -> str:
    n = int(counts.get(key, 0))
    return f"{n} {noun}{'s' * (n != 1)}"


def collected(counts: dict[str, int]) -> str:
    """The user's edits and the ratings that stand, in numbers that add up: the A/B answers are the decided
    ones plus the ties and "both bad"; the blind A/B's test edits are not among the edits."""
    mine = {"edits": int(counts.get("edits", 0)) - int(counts.get("ab_edits", 0)),
            "candidates": int(counts.get("candidates", 0)) - int(counts.get("ab_candidates", 0)),
            "answers": int(counts.get("pairs_decided", 0)) + int(counts.get("pairs_undecided", 0))}
    return (f"{_count(mine, 'edits', 'edit')} · {_count(mine, 'candidates', 'candidate')} · "
            f"{_count(mine, 'answers', 'A/B answer')}: {counts.get('pairs_decided', 0)} decided, "
            f"{counts.get('pairs_undecided', 0)} ties or both bad · {counts.get('best_of_n', 0)} best-of-N · "
            f"thumbs {counts.get('thumbs_up', 0)} up / {counts.get('thumbs_down', 0)} down · "
            f"{_count(counts, 'stars', 'star rating')} · {_count(counts, 'raters', 'rater')}")


def counts_markdown(counts: dict[str, int]) -> str:
    r = readiness(counts)

    def line(name: str, key: str, what: str) -> str:
        v = r[key]
        if v["ready"]:
            return f"- **{name}**: ready ({v['have']} {what})"
        return f"- **{name}**: {v['have']}/{v['need']} {what} — **{v['more']} more** needed"

    return "\n".join(
        [
            f"**Collected:** {collected(counts)}"
            + (f" · {_count(counts, 'ab_rounds', 'blind A/B round')} (they judge models on held-out test edits, "
               "not counted here, and never train them)" if counts.get("ab_rounds") else ""),
            "",
            line("DPO (preference pairs)", "dpo", "pairs"),
            line("KTO (thumbs)", "kto", "thumbs, both kinds"),
            line("Reward model", "reward_model", "pairs"),
            "",
            expectation(counts),
        ]
    )


def pick_pair(candidate_ids: Sequence[int], rng: random.Random, avoid: Sequence[int] | None = None,
              seen: Sequence[Sequence[int]] = ()) -> list[int]:
    """Two different candidates in a random on-screen order (position bias is then measurable:
    the shown order is stored with the rating). Prefers a pair not among ``seen`` (the pairs already shown
    of these candidates, so "another pair" goes through them all), then one different from ``avoid``."""
    ids = list(dict.fromkeys(candidate_ids))
    if len(ids) < 2:
        return []
    shown = {tuple(sorted(p)) for p in seen}
    fresh = [p for p in itertools.combinations(sorted(ids), 2) if p not in shown]
    if fresh:
        return rng.sample(list(rng.choice(fresh)), 2)
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


def answer_words(kind: str, value: str, candidate_ids: Sequence[int], shown: Sequence[int]) -> str:
    """A rating in words, candidates named by their number among the ``shown`` (#1 …): the same words for
    the same answer whichever side of the A/B each candidate was on."""
    if kind == "pair":
        if value in ("A", "B"):
            return f"#{list(shown).index(candidate_ids['AB'.index(value)]) + 1} better"
        return rating_label("pair", value, 0).removeprefix("A/B: ")
    if kind == "best_of_n":
        return f"#{list(shown).index(int(value)) + 1} as the best"
    return rating_label(kind, value, candidate_ids[0])


def earlier_rating(store: Store, rater: str, kind: str, candidate_ids: Sequence[int]) -> Rating | None:
    """The standing rating of ``rater`` that a new ``kind`` rating of these candidates replaces: the store
    keeps the newest per rater, kind and set of candidates (``Store.standing_ratings``); None if none."""
    key = standing_key(rater, kind, candidate_ids)
    mine = [r for r in store.standing_ratings(kind, candidate_id=key[2][0])
            if standing_key(r.rater, r.kind, r.candidate_ids) == key]
    return mine[-1] if mine else None


def save_rating(store: Store, rater: str, kind: str, value: Any, shown: Sequence[int], selected: int,
                pair: Sequence[int]) -> tuple[int, str]:
    """Store one click on a rating button about the ``shown`` candidates (``selected`` the one in view,
    ``pair`` the A/B pair on screen, A first); returns (rating id, what was saved, in words). When it
    replaces the rater's earlier rating of the same candidates, the words say so: the store counts the
    newest one only, and the totals on the page then do not grow.

    Raises ``ValueError`` when the click needs more candidates than are shown, or rates a blind A/B's
    held-out test edit (rated in the blind A/B only, and counted nowhere else); ``StoreError`` when the
    store refuses it."""
    ids = list(shown)
    if store.ab_test_ids(ids):
        raise ValueError("This is a held-out test edit of the Fine-tune tab's blind A/B: it is rated there, "
                         "in the blind A/B, not here.")
    if kind in ("thumb", "star"):
        rated, stored = [selected], str(value)
        what = f"{rating_label(kind, stored, selected)} for candidate #{ids.index(selected) + 1}"
    elif kind == "best_of_n":
        if len(ids) < 2:
            raise ValueError("Best-of-N needs at least two candidates.")
        rated, stored, what = ids, str(selected), f"candidate #{ids.index(selected) + 1} is the best of {len(ids)}"
    else:
        if len(pair) != 2:
            raise ValueError("A/B needs at least two candidates.")
        # candidate_ids = [A, B] as shown (A left): the shown order is part of the data.
        # the screen moves on to a fresh pair at once: the words say which two were decided
        rated, stored = list(pair), str(value)
        what = f"{rating_label('pair', value, 0)} (A was #{ids.index(pair[0]) + 1}, B was #{ids.index(pair[1]) + 1})"
    before = earlier_rating(store, rater, kind, rated)
    rid = store.add_rating(rater=rater, kind=kind, value=stored, candidate_ids=rated, shown_order=rated)
    if before is not None:
        was = answer_words(kind, before.value, before.candidate_ids, ids)
        now = answer_words(kind, stored, rated, ids)
        note = "the same as your earlier rating: it counts once" if was == now else f"replaces your earlier {was}"
        what = f"{what[:-1]}; {note})" if what.endswith(")") else f"{what} ({note})"
    return rid, what


# -- blind A/B statistics ------------------------------------------------------------------------------

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a rate ``successes / n`` (ties may count half, so ``successes`` is a float).

    Chosen over the plain normal interval because it stays inside [0, 1] and keeps its coverage at the
    small counts a person rates (tens of comparisons), where the normal one is too narrow."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(successes / n, 0.0), 1.0)
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def comparisons_to_tell(rate: float, z: float = Z95, limit: int = 100_000) -> int | None:
    """Comparisons after which a true win rate ``rate`` puts the Wilson interval clear of 50 % (None: the
    rate is 50 %, or more than ``limit`` would be needed)."""
    if abs(rate - 0.5) < 1e-9:
        return None

    def clear(n: int) -> bool:
        lo, hi = wilson_interval(rate * n, n, z)
        return lo > 0.5 or hi < 0.5

    if not clear(limit):
        return None
    lo, hi = 1, limit
    while lo < hi:  # clear(n) is monotone in n for a fixed rate
        mid = (lo + hi) // 2
        if clear(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def ab_verdict(name: str, other: str, wins: int, ties: int, n: int) -> str:
    """One markdown line: ``name``'s win rate against ``other`` (ties count half), its 95 % interval and
    the number of comparisons, and whether the difference is measurable yet."""
    if n == 0:
        return f"**{name}** vs **{other}**: no comparisons yet."
    rate = (wins + ties / 2) / n
    lo, hi = wilson_interval(wins + ties / 2, n)
    head = (f"**{name}** vs **{other}**: {name} wins **{rate:.0%}** of {n} comparison{'s' * (n != 1)} "
            f"(95 % interval {lo:.0%}–{hi:.0%}; ties count half)")
    if lo > 0.5:
        return f"{head} — **{name} is measurably better.**"
    if hi < 0.5:
        return f"{head} — ⚠️ **{name} is measurably worse.**"
    more = comparisons_to_tell(rate)
    hint = (f"; if this rate holds, about {max(more - n, 1)} more comparisons would tell"
            if more is not None and more > n and more - n <= 2000 else "")
    return f"{head} — **no measurable difference yet** (the interval contains 50 %){hint}."
