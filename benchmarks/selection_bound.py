"""How far can learning from ratings move the blind A/B, at most? A bound from the model's own candidates.

    python -m training.eval --fp16 --candidates 4 --kinds <kinds> --out cands.json     # N candidates per photo
    python -m benchmarks.selection_bound cands.json [--rounds 150] [--seed 0]

Ratings pick among the model's candidates; a model fine-tuned on them can at best learn to write, for
every photo, the candidate the raters would have liked most. So the blind A/B of ``benchmarks.feedback_loop``
is bounded by a contest between an ideal "best of N" model (the verifier's best candidate of each held-out
photo) and the model as it is (one of its candidates at random), judged by the same simulated rater
(``benchmarks.feedback_loop.Person``: the verifier's score plus noise, a share of random answers, close
pairs called a tie; ties count half, as in the Fine-tune tab).

Printed per edit kind and overall, with the Wilson 95 % interval that ``--rounds`` comparisons at the
overall rate would give. The last line is machine-readable:

    selection_bound winrate=… ci_low=… ci_high=… rounds=… spread=… n=…

(``spread``: the mean over photos of best minus mean candidate score, in verifier points.) A model can beat
this bound only by extrapolating past its best candidates, which preference methods do not promise.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from benchmarks.feedback_loop import Person
from studio.ratings import wilson_interval


def contest(best: float, other: float, judge: Person) -> float:
    """1 when the judge prefers the best-of-N side, 0.5 for a tie, 0 otherwise (best shown on a random side)."""
    if judge.rng.random() < 0.5:
        v = judge.pair(best, other)
        return {"A": 1.0, "B": 0.0, "tie": 0.5}[v]
    v = judge.pair(other, best)
    return {"A": 0.0, "B": 1.0, "tie": 0.5}[v]


def bound(samples: list[dict], judge: Person, draws: int = 200) -> dict[str, list[float]]:
    """Per kind, the judge's verdicts over ``draws`` contests per photo."""
    out: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        scores = [c["overall"] for c in s["candidates"]]
        if len(scores) < 2:
            raise SystemExit(f"{s['id']}: one candidate; run training.eval with --candidates 2 or more")
        for _ in range(draws):
            out[s["kind"]].append(contest(max(scores), judge.rng.choice(scores), judge))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.selection_bound", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_json", type=Path, help="training.eval --out of a run with --candidates N ≥ 2")
    ap.add_argument("--rounds", type=int, default=150, help="blind A/B rounds the interval is for (default 150)")
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--inconsistent", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    res = json.loads(a.eval_json.read_text())
    judge = Person("judge", noise=a.noise, inconsistent=a.inconsistent, seed=a.seed)
    verdicts = bound(res["samples"], judge)
    spread = defaultdict(list)
    for s in res["samples"]:
        sc = [c["overall"] for c in s["candidates"]]
        spread[s["kind"]].append(max(sc) - statistics.mean(sc))
    print(f"{'kind':16s} {'photos':>6s} {'spread':>7s} {'win rate':>9s}")
    for k, v in verdicts.items():
        print(f"{k:16s} {len(spread[k]):6d} {statistics.mean(spread[k]):7.2f} {statistics.mean(v):9.3f}")
    all_v = [x for v in verdicts.values() for x in v]
    rate = statistics.mean(all_v)
    lo, hi = wilson_interval(rate * a.rounds, a.rounds)
    mean_spread = statistics.mean(x for v in spread.values() for x in v)
    print(f"selection_bound winrate={rate:.3f} ci_low={lo:.3f} ci_high={hi:.3f} rounds={a.rounds} "
          f"spread={mean_spread:.2f} n={len(res['samples'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
