"""Speculative decoding (``engine.drafts``) against one token per pass, on real held-out edits.

    python -m benchmarks.speculative [--bundle assets/earl-nano] [--n-per-kind 1] [--batches 1,4]
                                     [--kinds all] [--no-generate]

Every sample of the held-out test suite (``--n-per-kind`` per edit kind) is decoded by ``engine.sampler``
three ways in this process, with the same seeds, at the studio's temperature (0.7, top-k 2048), with
engine.edit's fp16 decoding weights: one token per forward pass (``speculate=0``), with guesses
(``speculate=16``, engine.edit's default), and at batch 1 by transformers' ``generate`` with the same
constraint (``prefix_allowed_tokens_fn``; it cannot add the grid embedding, so it runs the LM without it).
Batch 4 is the studio's default number of candidates. tok/s = generated tokens / wall time, prefill
included. Both of our ways must give the same tokens (checked; counted in ``same=``).

Printed per edit category and overall; last line machine-readable::

    speculative b1_speedup=<spec / plain> b1_vs_generate=<spec / generate> b4_speedup=… same=<equal>/<runs>
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from benchmarks.sampler import run_hf
from engine.bundle import load_bundle
from engine.image_io import fit_to_bundle
from engine.layout import build_prompt
from engine.sampler import fp16_default, sample_all
from training.eval import load_samples, sample_seed

TEMPERATURE, TOP_K, SPECULATE = 0.7, 2048, 16


def ours(bundle, prompt, hw, seeds, speculate: int) -> tuple[float, list[list[int]]]:
    t = time.perf_counter()
    gens = sample_all(bundle, [prompt] * len(seeds), *hw, seeds, temperature=TEMPERATURE, top_k=TOP_K,
                      fp16=fp16_default(bundle), speculate=speculate)
    dt = time.perf_counter() - t
    return sum(len(g.tokens) for g in gens) / dt, [g.tokens for g in gens]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=str(Path(__file__).resolve().parent.parent / "assets" / "earl-nano"))
    ap.add_argument("--n-per-kind", type=int, default=1)
    ap.add_argument("--kinds", default="", help="comma list of edit kinds (default: all 24)")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--no-generate", action="store_true")
    args = ap.parse_args()
    bundle = load_bundle(args.bundle, dtype=torch.float32)
    bundle.lm.eval()
    samples = load_samples(split="test", n_per_kind=args.n_per_kind,
                           kinds=args.kinds.split(",") if args.kinds else None)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"{bundle.config.name}@{bundle.config.version}: {len(samples)} held-out edits, T={TEMPERATURE}, "
          f"top-k {TOP_K}, fp16 decoding {fp16_default(bundle)}, torch threads {torch.get_num_threads()}")
    warm = samples[0]
    src = bundle.vq.encode([fit_to_bundle(bundle, warm["source"])])[0]
    ours(bundle, build_prompt(bundle.tokenizer, src, warm["instruction"], False), src.shape, [0], SPECULATE)

    rate = defaultdict(list)  # (category, way, batch) -> tok/s
    same = runs = 0
    for s in samples:
        src = bundle.vq.encode([fit_to_bundle(bundle, s["source"])])[0]
        tgt_hw = fit_to_bundle(bundle, s["target"]).size[::-1]
        hw = (tgt_hw[0] // bundle.vq.spatial_factor, tgt_hw[1] // bundle.vq.spatial_factor)
        prompt = build_prompt(bundle.tokenizer, src, s["instruction"], False)
        line = f"{s['kind']:<16}"
        for b in batches:
            seeds = [sample_seed(0, s["id"]) + i for i in range(b)]
            r0, t0 = ours(bundle, prompt, hw, seeds, 0)
            r1, t1 = ours(bundle, prompt, hw, seeds, SPECULATE)
            same += int(t0 == t1)
            runs += 1
            if t0 != t1:  # float summation order can reorder near-tied tokens in the sampler's sort
                first = min(next((j for j, (a, c) in enumerate(zip(x, y, strict=False)) if a != c), len(x))
                            for x, y in zip(t0, t1, strict=True))
                line += f" [b{b}: tokens differ from token {first} on]"
            for cat in (s["category"], "overall"):
                rate[(cat, "plain", b)].append(r0)
                rate[(cat, "spec", b)].append(r1)
            line += f"  b{b}: {r0:6.1f} -> {r1:6.1f} tok/s ({r1 / r0:.2f}x)"
        if not args.no_generate:
            rg = run_hf(bundle, prompt, 1, None, hw=hw, temperature=TEMPERATURE)[0]
            for cat in (s["category"], "overall"):
                rate[(cat, "generate", 1)].append(rg)
            line += f"  generate b1: {rg:6.1f}"
        print(line, flush=True)

    cats = [c for c in ("global", "geometry", "object", "compose", "overall") if (c, "plain", batches[0]) in rate]
    print(f"\n{'category':<10}" + "".join(f" {f'b{b} plain':>10} {f'b{b} spec':>9} {'x':>6}" for b in batches)
          + ("" if args.no_generate else f" {'generate':>9} {'spec/gen':>9}"))
    for c in cats:
        row = f"{c:<10}"
        for b in batches:
            p, q = np.mean(rate[(c, "plain", b)]), np.mean(rate[(c, "spec", b)])
            row += f" {p:>10.1f} {q:>9.1f} {q / p:>6.2f}"
        if not args.no_generate:
            g = np.mean(rate[(c, "generate", 1)])
            row += f" {g:>9.1f} {np.mean(rate[(c, 'spec', 1)]) / g:>9.2f}" if 1 in batches else f" {g:>9.1f}"
        print(row)
    summary = " ".join(f"b{b}_speedup={np.mean(rate[('overall', 'spec', b)]) / np.mean(rate[('overall', 'plain', b)]):.2f}"
                       for b in batches)
    if not args.no_generate and 1 in batches:
        summary += f" b1_vs_generate={np.mean(rate[('overall', 'spec', 1)]) / np.mean(rate[('overall', 'generate', 1)]):.2f}"
    print(f"speculative {summary} same={same}/{runs}")


if __name__ == "__main__":
    main()
