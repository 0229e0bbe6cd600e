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

``--ceiling``: the ideal side is instead a perfect model of this tokenizer, which writes every photo's exact
target through the bundle's image tokenizer (the eval's ``vq`` score): how far any fine-tuning of the
language model could move the A/B on these photos under this judge.

``--pool B.json …``: candidates the studio could show beside the model's own, from other ``training.eval``
runs on the same samples (matched by id), e.g. with classifier-free guidance (``--cfg-text``): the raters'
best is then taken over all of them, while "the model as it is" stays a candidate of the first run.
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


def scores(sample: dict, pool: dict[str, list[float]] | None = None,
           ceiling: bool = False) -> tuple[list[float], float]:
    """A sample's own candidate scores, and the best score over them and its ``pool`` scores (by sample id),
    or with ``ceiling`` its exact target's score through the tokenizer."""
    own = [c["overall"] for c in sample["candidates"]]
    if ceiling:
        return own, float(sample["vq"])
    extra = (pool or {}).get(sample["id"], [])
    if len(own) + len(extra) < 2:
        raise SystemExit(f"{sample['id']}: one candidate; run training.eval with --candidates 2 or more")
    return own, max(own + extra)


def bound(samples: list[dict], judge: Person, draws: int = 200,
          pool: dict[str, list[float]] | None = None, ceiling: bool = False) -> dict[str, list[float]]:
    """Per kind, the judge's verdicts over ``draws`` contests per photo: the best of the sample's candidates
    and its ``pool`` scores (by sample id), or its tokenizer ceiling, against one of its own candidates at
    random."""
    out: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        own, best = scores(s, pool, ceiling)
        for _ in range(draws):
            out[s["kind"]].append(contest(best, judge.rng.choice(own), judge))
    return out


def pooled(runs: list[dict], ids: set[str]) -> dict[str, list[float]]:
    """Candidate scores by sample id over ``runs`` (``training.eval`` results), for the samples in ``ids``;
    a run missing one of them is refused (the pool must cover the same photos and instructions)."""
    pool: dict[str, list[float]] = defaultdict(list)
    for i, run in enumerate(runs):
        have = {s["id"]: s for s in run["samples"]}
        missing = ids - have.keys()
        if missing:
            raise SystemExit(f"--pool run {i + 1} lacks {len(missing)} of the samples (e.g. {sorted(missing)[0]}): "
                             "run it with the same --split, --kinds and --n-per-kind")
        for sid in ids:
            pool[sid].extend(c["overall"] for c in have[sid]["candidates"])
    return pool


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.selection_bound", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_json", type=Path, help="training.eval --out of a run with --candidates N ≥ 2")
    ap.add_argument("--rounds", type=int, default=150, help="blind A/B rounds the interval is for (default 150)")
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--inconsistent", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ceiling", action="store_true",
                    help="the ideal side writes the exact target through the tokenizer (the eval's vq score)")
    ap.add_argument("--pool", type=Path, nargs="*", default=[],
                    help="training.eval --out files of other runs on the same samples: more candidates to pick from")
    a = ap.parse_args(argv)
    res = json.loads(a.eval_json.read_text())
    judge = Person("judge", noise=a.noise, inconsistent=a.inconsistent, seed=a.seed)
    pool = pooled([json.loads(p.read_text()) for p in a.pool], {s["id"] for s in res["samples"]}) if a.pool else {}
    if a.ceiling and (a.pool or any("vq" not in s for s in res["samples"])):
        ap.error("--ceiling: the eval's samples need their vq score, and --pool does not apply")
    verdicts = bound(res["samples"], judge, pool=pool, ceiling=a.ceiling)
    spread = defaultdict(list)
    for s in res["samples"]:
        own, best = scores(s, pool, a.ceiling)
        spread[s["kind"]].append(best - statistics.mean(own))
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
