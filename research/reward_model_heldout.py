"""Does a reward model learned from a loop run's ratings rank *new* edits the way the raters would?

    python -m research.reward_model_heldout --ratings runs/loop-E --heldout runs/loop-G

Trains ``training.reward_model`` (frozen LM features + a small head) on the ratings of one
``benchmarks.feedback_loop`` run (``--ratings``), then scores the blind A/B rounds of another run
(``--heldout``): held-out photos, candidates of two models, each with its tokens in the store and its
verifier score in the run's log. A reward for GRPO must order the two sides of such a round; its own
validation accuracy (pairs split at random, the same candidates on both sides) says little about that.
Last line:

    reward_model_heldout pairs=… right=… wrong=… accuracy=… corr=…

(``pairs``: rounds whose two verifier scores differ by more than ``--gap``; ``corr``: the correlation of
reward and verifier score over every candidate, across photos as well as within them.)
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def heldout_rounds(run: Path) -> list[tuple[list, tuple[float, float]]]:
    """(the two candidates, their verifier scores) of each blind A/B round the run's log scored."""
    from feedback.store import Store

    lines = [ln for ln in (run / "log.txt").read_text().splitlines() if ln.startswith("A/B ")]
    store = Store(run / "data")
    decided = (store.candidates(r.candidate_ids) for r in store.ratings("pair") if r.value in ("A", "B", "tie"))
    ab = [cands for cands in decided if all(c.settings.get("ab_test") for c in cands)]
    out = []
    for cands, line in zip(ab[-len(lines):], lines, strict=True):
        m = re.search(r"left ([\d.]+) right ([\d.]+)", line)
        if m is None:
            raise ValueError(f"not an A/B line: {line}")
        out.append((cands, (float(m.group(1)), float(m.group(2)))))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m research.reward_model_heldout", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratings", type=Path, required=True, help="a feedback_loop --out whose ratings train the model")
    ap.add_argument("--heldout", type=Path, required=True, help="a feedback_loop --out whose A/B rounds test it")
    ap.add_argument("--bundle", default="assets/earl-nano", help="the bundle both runs edited with (features)")
    ap.add_argument("--gap", type=float, default=0.5, help="verifier points two sides must differ by to count")
    ap.add_argument("--out", type=Path, default=Path("runs/reward-model-heldout"))
    a = ap.parse_args(argv)
    from engine.bundle import load_bundle
    from feedback.pairs import StoreExamples
    from feedback.store import Store
    from training.reward_model import train_reward_model

    torch.set_num_threads(2)
    bundle = load_bundle(a.bundle)
    rm = train_reward_model(bundle, Store(a.ratings / "data"), a.out, bundle_path=a.bundle)
    print(f"trained on {rm.meta.get('pairs_train')} pairs; its own validation accuracy {rm.meta.get('val_accuracy')}")
    rounds = heldout_rounds(a.heldout)
    ex = StoreExamples(bundle, Store(a.heldout / "data"))
    right = wrong = 0
    rewards, scores = [], []
    for cands, (sl, sr) in rounds:
        el, er = (ex.example(c) for c in cands)
        if el is None or er is None:
            continue
        rl, rr = (rm.score_tokens(e.prompt_ids, e.gen_ids) for e in (el, er))
        rewards += [rl, rr]
        scores += [sl, sr]
        if abs(sl - sr) > a.gap:
            right += (rl > rr) == (sl > sr)
            wrong += (rl > rr) != (sl > sr)
    corr = float(np.corrcoef(rewards, scores)[0, 1])
    print(f"reward_model_heldout pairs={right + wrong} right={right} wrong={wrong} "
          f"accuracy={right / max(1, right + wrong):.3f} corr={corr:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
