"""The blind A/B's statistics: the Wilson interval (checked against SciPy's), the comparisons a win rate
needs before it is measurable, the verdict the Fine-tune tab shows, and the tab's table from a real store."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

from feedback.store import NewCandidate, Store
from studio.ratings import ab_verdict, comparisons_to_tell, wilson_interval


@pytest.mark.parametrize("k,n", [(0, 4), (4, 4), (7, 10), (52, 100), (61, 100), (150, 300), (1, 1)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)


def test_wilson_edges_and_ties() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)  # nothing measured: anything is possible
    lo, hi = wilson_interval(5.5, 10)  # a tie counts half
    assert lo < 0.55 < hi and 0.0 < lo and hi < 1.0
    # more comparisons at the same rate narrow the interval
    assert wilson_interval(60, 100)[0] > wilson_interval(6, 10)[0]


@pytest.mark.parametrize("rate", [0.6, 0.65, 0.35, 0.55])
def test_comparisons_to_tell_is_the_first_clear_count(rate: float) -> None:
    n = comparisons_to_tell(rate)
    assert n is not None and n > 1

    def clear(m: int) -> bool:
        lo, hi = wilson_interval(rate * m, m)
        return lo > 0.5 or hi < 0.5

    assert clear(n) and not clear(n - 1)
    assert comparisons_to_tell(0.5) is None


def test_verdict_says_no_measurable_difference_while_the_interval_holds_half() -> None:
    v = ab_verdict("new", "old", 6, 0, 10)
    assert "60%" in v and "10 comparisons" in v and "95 % interval 31%–83%" in v
    assert "no measurable difference yet" in v and "more comparisons would tell" in v
    assert "measurably better" in ab_verdict("new", "old", 65, 0, 100)
    assert "measurably worse" in ab_verdict("new", "old", 30, 0, 100)
    # 50 wins and 20 ties of 100 are a 60 % rate with ties counted half
    assert "60%" in ab_verdict("new", "old", 50, 20, 100)
    assert "no comparisons yet" in ab_verdict("new", "old", 0, 0, 0)


SETTINGS = {"think": False, "temperature": 1.0, "top_k": 2048, "top_p": 1.0}


def _ab_round(store: Store, winner: str, loser: str, value: str, swap: bool) -> None:
    img = Image.new("RGB", (16, 16), (90, 120, 30))
    ids = []
    for bid in (winner, loser):
        (cid,) = store.add_candidates(source=img, instruction="flip it", bundle_id=bid, weights_hash=bid,
                                      settings={**SETTINGS, "ab_test": True},
                                      candidates=[NewCandidate(img, [1, 2], [-0.1, -0.2], 0, 0, "", (2, 2), {})])
        ids.append(cid)
    if swap:
        ids = ids[::-1]
        value = {"A": "B", "B": "A"}.get(value, value)
    store.add_rating("judge", "pair", value, ids, shown_order=ids)


def test_finetune_tab_table_reports_interval_and_verdict(tmp_path) -> None:
    from studio import finetune_tab as ft

    with Store(tmp_path) as store:
        ctx = SimpleNamespace(store=store)
        assert ft.ab_win_rates(ctx) == "No blind A/B ratings yet."
        # new wins 7, old wins 2, one tie: 75 % of 10, not measurable yet
        for k in range(7):
            _ab_round(store, "new@1", "old@0", "A", swap=k % 2 == 1)
        for k in range(2):
            _ab_round(store, "old@0", "new@1", "A", swap=k % 2 == 0)
        _ab_round(store, "new@1", "old@0", "tie", swap=False)
        # an A/B click in the Edit tab (not a blind round) does not count
        img = Image.new("RGB", (16, 16))
        c = store.add_candidates(source=img, instruction="x", bundle_id="new@1", weights_hash="h", settings=SETTINGS,
                                 candidates=[NewCandidate(img, [1], [-0.1], s, s, "", (1, 1), {}) for s in (0, 1)])
        store.add_rating("judge", "pair", "A", c, shown_order=c)
        table = ft.ab_win_rates(ctx)
        lo, hi = wilson_interval(7.5, 10)
        assert f"| new@1 | 10 | 7 | 1 | 75% | {lo:.0%}–{hi:.0%} |" in table, table
        assert "| old@0 | 10 | 2 | 1 | 25% |" in table
        assert "**new@1** vs **old@0**: new@1 wins **75%** of 10 comparisons" in table
        assert "no measurable difference yet" in table
        assert ft.ab_results(ctx) == {("new@1", "old@0"): [10, 7, 1]}
        # the blind rounds judge held-out photos: never training data, never counted as such
        assert [(p.kind, p.chosen.id) for p in store.preference_pairs()] == [("pair", c[0])]
        counts = store.counts()
        assert (counts["preference_pairs"], counts["pairs_decided"], counts["ab_rounds"]) == (1, 1, 10)
        for _ in range(30):
            _ab_round(store, "new@1", "old@0", "A", swap=True)
        assert "new@1 is measurably better" in ft.ab_win_rates(ctx)


def test_expectation_is_stated_from_the_measured_loop() -> None:
    from studio.ratings import LOOP_MEASURED, counts_markdown, expectation, training_ratings

    counts = {"thumbs_up": 30, "thumbs_down": 10, "stars": 20, "pairs_decided": 25, "pairs_undecided": 5,
              "best_of_n": 15, "preference_pairs": 70}
    assert training_ratings(counts) == 100  # ties and "both bad" train nothing
    done = {"ratings": 300, "measurable": True, "winrate": 0.62, "ci": (0.56, 0.68), "source": "the notes"}
    line = expectation(counts, done)
    assert "about **200 more ratings** for a measurable change" in line and "62%" in line and "56%–68%" in line
    assert "as many as gave a measurable change" in expectation({**counts, "stars": 220}, done)
    not_yet = expectation(counts, {**done, "measurable": False})
    assert "did not yet give a measurable change" in not_yet and "more than 200 more ratings" in not_yet
    # the page says what the shipped measurement says
    assert expectation(counts) in counts_markdown(counts)
    assert LOOP_MEASURED["source"].startswith("research/")
    # … in words a studio user can act on: the numbers, how many more ratings, where to check; no repo path
    line = expectation(counts)
    assert "49%" in line and "44%–55%" in line and "more than 200 more ratings" in line, line
    assert "research/" not in line and "blind A/B" in line
