"""What a feedback-loop run's blind A/B could show: its rounds by the verifier, and re-judged many times.

    python -m benchmarks.ab_rejudge runs/loop-G [--judges 200]
    python -m benchmarks.ab_rejudge --evals old.json new.json      # two training.eval runs instead

Reads a ``benchmarks.feedback_loop --out`` folder: the A/B rounds its log scored (the verifier's score of
the left and the right image) and the store's A/B ratings, which say which side was the new model. Prints
how many rounds the new model's output scored higher, lower or the same, the mean scores, and the win rate
the new model would get on average from ``--judges`` simulated judges of the run's kind (``Person``:
verifier plus noise, random answers, ties), each on the same outputs. The run's own judge is one of them,
so its tally sits somewhere in that spread.

``--evals OLD NEW``: the same contest without the studio, between two ``training.eval --out`` files of the
two models on the same samples with the same ``--seed`` (and ``--candidates``): candidate k of a sample by
one model meets candidate k of the same sample by the other, as both sides of an A/B round share a seed.
Minutes of decoding instead of an A/B run, for choosing what to try in the studio. Last line:

    ab_rejudge rounds=… new_better=… old_better=… level=… mean_new=… mean_old=… expected_winrate=… sd=…
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.feedback_loop import Person


def run_setup(run: Path) -> tuple[str, dict[str, float]]:
    """The fine-tuned bundle's id and the run's judge settings (``Person`` keyword arguments), from the
    run's result; a run stopped before its end has none: its one new bundle, and ``Person``'s defaults."""
    result = run / "result.json"
    if result.exists():
        res = json.loads(result.read_text())
        folder = Path(res["new_bundle"])
        judge = {k: float(res["args"][k]) for k in ("noise", "inconsistent")}
    else:
        folders = sorted((run / "data" / "bundles").glob("*/bundle.json"))
        if len(folders) != 1:
            raise SystemExit(f"{run}: no result.json and {len(folders)} bundles; cannot tell the new model")
        folder, judge = folders[0].parent, {}
    cfg = json.loads((folder / "bundle.json").read_text())
    return f"{cfg['name']}@{cfg['version']}", judge


def rounds(run: Path, new_id: str) -> list[tuple[float, float]]:
    """(new model's score, old model's score) per A/B round of the run, in order; ``new_id``: the new
    model's bundle id."""
    from feedback.store import Store

    lines = [ln for ln in (run / "log.txt").read_text().splitlines() if ln.startswith("A/B ")]
    with Store(run / "data") as store:
        ab = []
        for r in store.ratings("pair"):
            if r.value not in ("A", "B", "tie"):
                continue
            cands = {c.id: c for c in store.candidates(r.candidate_ids)}
            if all(c.settings.get("ab_test") for c in cands.values()):
                ab.append(cands[r.candidate_ids[0]].bundle_id)
    ab = ab[-len(lines):]  # a --reuse run's store also holds the earlier run's rounds
    out = []
    for left_bundle, line in zip(ab, lines, strict=True):
        m = re.search(r"left ([\d.]+) right ([\d.]+)", line)
        if m is None:
            raise ValueError(f"not an A/B line: {line}")
        left, right = float(m.group(1)), float(m.group(2))
        new_left = left_bundle == new_id
        out.append((left, right) if new_left else (right, left))
    return out


def eval_pairs(old: dict, new: dict) -> list[tuple[float, float]]:
    """(new score, old score) per candidate of every sample that both ``training.eval`` results hold, matched
    by sample id and candidate index; refused when the two runs' settings differ in what they sampled."""
    keys = ("seed", "temperature", "top_k", "top_p", "candidates", "set_path", "phrasings")
    differ = [k for k in keys if old["settings"].get(k) != new["settings"].get(k)]
    if differ:
        raise SystemExit(f"the two evals sampled differently ({', '.join(differ)}); run both with the same flags")
    by_id = {s["id"]: s for s in old["samples"]}
    out = []
    for s in new["samples"]:
        o = by_id.get(s["id"])
        if o is not None:
            out += [(c["overall"], d["overall"]) for c, d in zip(s["candidates"], o["candidates"], strict=True)]
    if not out:
        raise SystemExit("the two evals share no sample")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ab_rejudge", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, nargs="?", help="a benchmarks.feedback_loop --out folder")
    ap.add_argument("--evals", type=Path, nargs=2, metavar=("OLD", "NEW"),
                    help="two training.eval --out files instead of a run (judge: Person's defaults)")
    ap.add_argument("--judges", type=int, default=200, help="simulated judges (seeds 0 … N-1)")
    a = ap.parse_args(argv)
    if (a.run is None) == (a.evals is None):
        ap.error("give a run folder or --evals OLD NEW")
    if a.evals:
        pairs = eval_pairs(*(json.loads(p.read_text()) for p in a.evals))
        judge_kw: dict[str, float] = {}
    else:
        new_id, judge_kw = run_setup(a.run)
        pairs = rounds(a.run, new_id)
    rates = []
    for seed in range(a.judges):
        judge = Person("judge", seed=seed, **judge_kw)
        votes = [judge.pair(n, o) for n, o in pairs]
        rates.append((votes.count("A") + votes.count("tie") / 2) / len(pairs))
    new = np.array([n for n, _ in pairs])
    old = np.array([o for _, o in pairs])
    print(f"ab_rejudge rounds={len(pairs)} new_better={int((new > old).sum())} old_better={int((new < old).sum())} "
          f"level={int((new == old).sum())} mean_new={new.mean():.3f} mean_old={old.mean():.3f} "
          f"expected_winrate={np.mean(rates):.3f} sd={np.std(rates):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
