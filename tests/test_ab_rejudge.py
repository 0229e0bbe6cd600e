"""benchmarks.ab_rejudge --evals: the blind A/B's contest between two ``training.eval`` runs, without the studio."""

from __future__ import annotations

import json

import pytest

from benchmarks.ab_rejudge import eval_pairs, main

SETTINGS = {"seed": 0, "temperature": 1.0, "top_k": 2048, "top_p": 1.0, "candidates": 2,
            "set_path": "data/suite/v1/test", "phrasings": "templates"}


def _run(scores: dict[str, list[float]], **settings: object) -> dict:
    return {"settings": {**SETTINGS, **settings},
            "samples": [{"id": i, "kind": "warmer", "candidates": [{"overall": x} for x in xs]}
                        for i, xs in scores.items()]}


def test_candidates_meet_by_sample_and_index_and_other_sampling_is_refused():
    old = _run({"a": [1.0, 2.0], "b": [3.0, 4.0], "c": [0.0, 0.0]})
    new = _run({"b": [5.0, 0.5], "a": [1.5, 2.0]})
    assert sorted(eval_pairs(old, new)) == sorted([(1.5, 1.0), (2.0, 2.0), (5.0, 3.0), (0.5, 4.0)])
    with pytest.raises(SystemExit, match="temperature"):
        eval_pairs(old, _run({"a": [1.0, 2.0]}, temperature=0.7))
    with pytest.raises(SystemExit, match="share no sample"):
        eval_pairs(old, _run({"z": [1.0, 2.0]}))


def test_a_clearly_better_model_wins_and_an_equal_one_does_not(tmp_path, capsys):
    old = _run({f"s{i}": [2.0, 2.0] for i in range(40)})
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "same.json").write_text(json.dumps(old))
    (tmp_path / "better.json").write_text(json.dumps(_run({f"s{i}": [8.0, 8.0] for i in range(40)})))

    def last(*argv: str) -> dict[str, float]:
        assert main(list(argv)) == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert line.startswith("ab_rejudge rounds=80 ")
        return {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}

    better = last("--evals", str(tmp_path / "old.json"), str(tmp_path / "better.json"), "--judges", "50")
    assert better["new_better"] == 80 and 0.85 < better["expected_winrate"] < 0.95  # only random answers lose
    same = last("--evals", str(tmp_path / "old.json"), str(tmp_path / "same.json"), "--judges", "50")
    assert same["level"] == 80 and abs(same["expected_winrate"] - 0.5) < 0.03
    with pytest.raises(SystemExit):
        main([])  # neither a run nor --evals
