"""The "Must show" experiments of RL / preference training, end to end, with wall times.

    python -m research.experiments dpo-simulated --bundle assets/earl-nano --prompts 200 --candidates 4 \\
        --eval-n 4 --out runs/dpo-sim
        # 1. edit `--prompts` train-suite photos into `--candidates` candidates each with the bundle (stored
        #    in a fresh feedback store under <out>/data, exact tokens), 2. simulated raters (the verifier +
        #    noise) rate them as A/B pairs through the store API, 3. DPO on those ratings
        #    (training.preference), 4. held-out verifier scores before / after per edit kind.

    python -m training.grpo --bundle assets/earl-nano --reward verifier --steps 200 --eval-n 4 --out runs/grpo
        # GRPO with the programmatic verifier; prints held-out before / after per kind and the wall time.

Both print a table ``kind  before  after  delta`` and the wall time of every stage.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from itertools import islice
from pathlib import Path


def dpo_simulated(a: argparse.Namespace) -> dict:
    import torch

    from engine.bundle import load_bundle
    from feedback.store import Store
    from training.data import suite
    from training.preference import PrefConfig, train
    from training.simulated_raters import SimulatedRater, generate, rate

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    data = out / "data"
    if any(data.glob("*.sqlite*")):
        raise SystemExit(f"{data} already holds a store; pick a fresh --out so ratings are not mixed")
    times: dict[str, float] = {}
    t0 = time.time()
    bundle = load_bundle(a.bundle)
    store = Store(data)
    corpus = a.corpus if a.corpus and (Path(a.corpus) / "manifest.jsonl").exists() else None
    samples = list(islice(suite.stream("train", seed=a.seed, root=corpus, area=bundle.config.image_area,
                                       kinds=[k for k in a.kinds.split(",") if k] or None), a.prompts))
    edits = generate(store, bundle, samples, n=a.candidates, think=a.think, seed=a.seed, top_k=a.top_k)
    times["generate_s"] = time.time() - t0
    t1 = time.time()
    raters = [SimulatedRater(f"sim-{i}", noise=a.noise, seed=a.seed + i) for i in range(a.raters)]
    counts = rate(store, edits, raters, kinds=("pair",), max_pairs=a.pairs_per_edit)
    times["rate_s"] = time.time() - t1
    agree = counts["pair_agreeing"] / max(1, counts["pair_with_gap"])
    print(f"generated {sum(len(e.ids) for e in edits)} candidates for {len(edits)} prompts; "
          f"{counts['pair']} A/B ratings, {agree:.0%} of the {counts['pair_with_gap']} with a score gap pick the "
          f"better candidate; store counts: {store.counts()}")
    t2 = time.time()
    cfg = PrefConfig(method="dpo", bundle=a.bundle, data=str(data), out=str(out / "dpo"), epochs=a.epochs,
                     batch_size=a.batch_size, lr=a.lr, beta=a.beta, sft_weight=a.sft_weight, lora=a.lora, eval_n=a.eval_n,
                     eval_split=a.eval_split, corpus=a.corpus, think_eval=a.think, seed=a.seed,
                     name=a.name or "", bundle_out=str(out / "bundle"))
    path = train(cfg)
    times["dpo_and_eval_s"] = time.time() - t2
    times["total_s"] = time.time() - t0
    metrics = json.loads((out / "dpo" / "metrics.json").read_text())
    result = {"bundle": str(path), "counts": store.counts(), "rater_agreement": round(agree, 4), "times": {k: round(v, 1) for k, v in times.items()},
              "metrics": metrics}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m research.experiments", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dpo-simulated", help="simulated raters → store → DPO → held-out before/after")
    d.add_argument("--bundle", default="assets/earl-nano")
    d.add_argument("--out", default="runs/dpo-sim")
    d.add_argument("--prompts", type=int, default=200, help="train-suite photos to edit")
    d.add_argument("--candidates", type=int, default=4)
    d.add_argument("--raters", type=int, default=1)
    d.add_argument("--noise", type=float, default=1.0, help="rater noise, verifier points (std)")
    d.add_argument("--pairs-per-edit", type=int, default=None, help="A/B pairs rated per edit (default: all)")
    d.add_argument("--kinds", default="", help="comma-separated edit kinds (default: all)")
    d.add_argument("--think", action="store_true")
    d.add_argument("--top-k", type=int, default=0)
    d.add_argument("--epochs", type=int, default=2)
    d.add_argument("--batch-size", type=int, default=8)
    d.add_argument("--lr", type=float, default=None)
    d.add_argument("--beta", type=float, default=0.1)
    d.add_argument("--sft-weight", type=float, default=0.0, help="+ this x NLL of the chosen candidate (RPO)")
    d.add_argument("--lora", action="store_true")
    d.add_argument("--eval-n", type=int, default=4, help="held-out samples per kind (0: skip before/after)")
    d.add_argument("--eval-split", default="val")
    d.add_argument("--corpus", default="data/corpus")
    d.add_argument("--name", default="")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    if a.cmd == "dpo-simulated":
        dpo_simulated(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
