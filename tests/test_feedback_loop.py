"""The feedback-loop benchmark's pieces that decide its numbers: the simulated people's answers and the
reading of the Fine-tune tab's A/B table (the end-to-end run itself: ``python -m benchmarks.feedback_loop
--quick``)."""

from __future__ import annotations

from types import SimpleNamespace

from benchmarks.feedback_loop import Person, parse_ab
from studio.ratings import wilson_interval


def test_a_consistent_noiseless_person_is_always_right() -> None:
    p = Person("p", noise=0.0, inconsistent=0.0, tie_margin=0.0)
    assert [p.pair(6.0, 2.0), p.pair(1.0, 3.0), p.pair(2.0, 2.0)] == ["A", "B", "tie"]
    assert p.thumb(7.0) and not p.thumb(3.0)
    assert p.stars(10.0) == 5 and p.stars(0.0) == 1 and p.stars(5.0) == 3
    assert p.best([1.0, 9.0, 3.0]) == 1


def test_noise_and_inconsistency_make_wrong_answers_at_the_expected_rates() -> None:
    noisy = Person("n", noise=1.0, inconsistent=0.0, tie_margin=0.0, seed=1)
    # a 1-point gap seen through 1 point of noise per image: wrong when N(0, sqrt 2) < -1, about 24 %
    wrong = sum(noisy.pair(5.0, 4.0) == "B" for _ in range(4000)) / 4000
    assert 0.20 < wrong < 0.28, wrong
    random_ = Person("r", noise=0.0, inconsistent=1.0, seed=2)
    answers = [random_.pair(9.0, 0.0) for _ in range(3000)]
    assert all(abs(answers.count(v) / 3000 - 1 / 3) < 0.04 for v in ("A", "B", "tie"))


def test_parse_ab_reads_the_tabs_table(tmp_path) -> None:
    from feedback.store import Store
    from studio import finetune_tab as ft
    from tests.test_ab_stats import _ab_round

    with Store(tmp_path) as store:
        for k in range(25):
            _ab_round(store, "new@1", "old@0", "A", swap=k % 2 == 0)
        for k in range(11):
            _ab_round(store, "old@0", "new@1", "A", swap=k % 3 == 0)
        for _ in range(4):
            _ab_round(store, "new@1", "old@0", "tie", swap=False)
        table = ft.ab_win_rates(SimpleNamespace(store=store))
    n, rate, lo, hi = parse_ab(table, "new@1")
    assert n == 40 and rate == (25 + 2) / 40
    assert (lo, hi) == wilson_interval(27, 40)
    n_old, rate_old, _, _ = parse_ab(table, "old@0")
    assert n_old == 40 and rate_old == (11 + 2) / 40
