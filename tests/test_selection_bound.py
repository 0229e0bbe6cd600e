"""benchmarks.selection_bound: the blind A/B an ideal learner of the raters' choices could win."""

from __future__ import annotations

import json

import pytest

from benchmarks.feedback_loop import Person
from benchmarks.selection_bound import bound, main, pooled


def _samples(spread: float, n: int = 30) -> list[dict]:
    return [{"id": f"s{i}", "kind": "warmer", "candidates": [{"overall": 5.0}, {"overall": 5.0},
                                                             {"overall": 5.0}, {"overall": 5.0 + spread}]}
            for i in range(n)]


def test_no_spread_no_win_and_a_wide_one_wins():
    same = bound(_samples(0.0), Person("j", seed=0))["warmer"]
    wide = bound(_samples(6.0), Person("j", seed=0))["warmer"]
    assert abs(sum(same) / len(same) - 0.5) < 0.03  # identical candidates: a coin, ties half
    # best 6 points above the other three: won whenever it is drawn against one of them and the judge answers
    assert 0.75 < sum(wide) / len(wide) < 0.9


def test_last_line_and_a_one_candidate_run_is_refused(tmp_path, capsys):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"samples": _samples(2.0)}))
    assert main([str(f), "--rounds", "100"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("selection_bound winrate=") and "rounds=100" in last and "n=30" in last
    f.write_text(json.dumps({"samples": [{"id": "x", "kind": "warmer", "candidates": [{"overall": 1.0}]}]}))
    with pytest.raises(SystemExit, match="one candidate"):
        main([str(f)])


def test_a_pool_of_better_candidates_raises_the_bound_and_must_cover_the_samples(tmp_path, capsys):
    own = _samples(0.0)
    alone = bound(own, Person("j", seed=0))["warmer"]
    better = pooled([{"samples": [{"id": s["id"], "candidates": [{"overall": 9.0}]} for s in own]}],
                    {s["id"] for s in own})
    assert better["s0"] == [9.0]
    helped = bound(own, Person("j", seed=0), pool=better)["warmer"]
    assert sum(helped) / len(helped) > sum(alone) / len(alone) + 0.25  # 9 against 5 on every photo
    f, g = tmp_path / "own.json", tmp_path / "other.json"
    f.write_text(json.dumps({"samples": own}))
    g.write_text(json.dumps({"samples": own[:-1]}))  # one sample short
    with pytest.raises(SystemExit, match="lacks 1 of the samples"):
        main([str(f), "--pool", str(g)])
    g.write_text(json.dumps({"samples": [{"id": s["id"], "kind": "warmer", "candidates": [{"overall": 9.0}]}
                                         for s in own]}))
    assert main([str(f), "--pool", str(g)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "spread=4.00" in last  # best 9 against the own candidates' mean 5


def test_the_tokenizer_ceiling_as_the_ideal_side(tmp_path, capsys):
    """--ceiling: a perfect model of the tokenizer (the vq score) against one candidate; a ceiling of 0
    (the exact target fails through the tokenizer) is a photo no fine-tune can win."""
    samples = [{**s, "vq": 9.0} for s in _samples(0.0, n=20)] + [{**s, "id": f"z{i}", "vq": 0.0}
                                                                for i, s in enumerate(_samples(0.0, n=20))]
    verdicts = bound(samples[:20], Person("j", seed=0), ceiling=True)["warmer"]
    assert sum(verdicts) / len(verdicts) > 0.85  # 9 against 5 on every photo
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"samples": samples}))
    assert main([str(f), "--ceiling"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "spread=-0.50" in last  # (4 + (-5)) / 2: half the photos' ceiling is below their candidates
    rate = float(last.split("winrate=")[1].split()[0])
    assert 0.45 < rate < 0.6  # the 0-ceiling half loses what the other half wins
    f.write_text(json.dumps({"samples": _samples(1.0)}))  # no vq scores
    with pytest.raises(SystemExit):
        main([str(f), "--ceiling"])
