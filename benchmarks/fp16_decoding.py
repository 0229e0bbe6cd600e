"""Half-precision against float32 decoding weights on the shipped bundle: speed, whether the same seed
writes the same edit, and how far the reported log-probs are from the exact ones.

    python -m benchmarks.fp16_decoding [--bundle PATH] [--n-per-kind 2] [--kinds K,...] [--threads 2]
    python -m benchmarks.fp16_decoding --group 8 --perturb 1e-3    # GRPO's rollouts (training.grpo)

For held-out test samples (``training.eval.load_samples``; built from ``data/corpus`` if missing) each
prompt is decoded twice with the same seed (EARL's sampling, temperature 1, top-k 2048, no think), with
float32 and with half-precision decoding weights (``engine.sampler``, ``fp16=True``). The fp16 run's
tokens are then scored teacher-forced by ``engine.logprobs.sequence_logprobs`` (float32, what training
uses): ``|Δ log p|`` per token is the fp16 sampler's reported log-prob against that, over the tokens the
model chose (forced tokens are 0 in both). Stored bundles hold bfloat16 weights, which float16 holds
exactly, so the expected answer is: identical tokens, differences at float32 rounding level. Both runs
decode on one thread, as ``engine.edit`` does; times are wall seconds in this process, so the ratio is
the speed-up.
``--group G`` decodes G candidates of each prompt together with seeds seed..seed+G-1, as a GRPO rollout
does; ``--perturb S`` first adds Gaussian noise of S times each weight matrix's RMS to the LM, so its
weights are no longer exact in float16, like a policy GRPO has trained (the loss then recomputes the
log-probs in float32: the differences below are how far the fp16 rollouts' sampling is from the policy).
Last line: ``fp16_decoding speedup=… same_tokens=… mean_abs_dlogp=… max_abs_dlogp=… n=…``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from engine.bundle import default_bundle_path, load_bundle
from engine.layout import build_prompt
from engine.logprobs import sequence_logprobs
from engine.sampler import fp16_available, sample_all


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None, help="bundle folder (default: the shipped assets/earl-nano)")
    ap.add_argument("--n-per-kind", type=int, default=2)
    ap.add_argument("--kinds", default=None, help="comma-separated edit kinds (default: all)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the prefill and tokenizer")
    ap.add_argument("--group", type=int, default=1, help="candidates per prompt, decoded together (GRPO: 8)")
    ap.add_argument("--perturb", type=float, default=0.0, help="relative weight noise (a trained policy)")
    a = ap.parse_args(argv)
    if not fp16_available():
        print("this torch build has no fbgemm kernels: nothing to compare")
        return 1
    torch.set_num_threads(a.threads)
    from engine.image_io import fit_to_bundle
    from training.eval import load_samples, sample_seed

    bundle = load_bundle(a.bundle or default_bundle_path())
    if a.perturb:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in bundle.lm.parameters():
                if p.dim() == 2:
                    p.add_(torch.randn(p.shape, generator=gen) * a.perturb * p.pow(2).mean().sqrt())
    samples = load_samples(n_per_kind=a.n_per_kind, kinds=a.kinds.split(",") if a.kinds else None)
    print(f"bundle {bundle.config.name}@{bundle.config.version}, {len(samples)} test samples, torch threads {a.threads}")
    tok = bundle.tokenizer
    grids = [np.asarray(g, dtype=np.int64) for g in bundle.vq.encode([fit_to_bundle(bundle, s["source"]) for s in samples])]
    prompt0 = build_prompt(tok, grids[0], samples[0]["instruction"], False)
    sample_all(bundle, [prompt0], *grids[0].shape, [0], top_k=2048, fp16=True)  # packs the weights, warms up
    sample_all(bundle, [prompt0], *grids[0].shape, [0], top_k=2048)
    t32 = t16 = 0.0
    n_tok = 0
    dlp: list[np.ndarray] = []
    dsum: list[float] = []
    same = 0
    n_edits = len(samples) * a.group
    for s, g in zip(samples, grids, strict=True):
        h, w = g.shape
        prompt = build_prompt(tok, g, s["instruction"], False)
        seeds = [sample_seed(0, s["id"]) + j for j in range(a.group)]
        t = time.perf_counter()
        es = sample_all(bundle, [prompt] * a.group, h, w, seeds, top_k=2048)
        t32 += time.perf_counter() - t
        t = time.perf_counter()
        qs = sample_all(bundle, [prompt] * a.group, h, w, seeds, top_k=2048, fp16=True)
        t16 += time.perf_counter() - t
        for e, q in zip(es, qs, strict=True):
            n_tok += len(q.tokens)
            same += q.tokens == e.tokens
            with torch.no_grad():
                exact = sequence_logprobs(bundle, [prompt], [q.tokens], h, w, False)[0, : len(q.tokens)].numpy()
            got = np.asarray(q.logprobs)
            chosen = got != 0  # forced tokens: 0 in both
            d = np.abs(got - exact)[chosen]
            dlp.append(d)
            dsum.append(float(got.sum() - exact.sum()))
            print(f"{s['kind']:<16} {s['id']:<28} tokens {len(q.tokens)}  same as float32: {q.tokens == e.tokens}  "
                  f"mean |Δlp| {d.mean():.2e}  max {d.max():.2e}  Δ sum {dsum[-1]:+.2e} (of {exact.sum():.1f})")
    allv = np.concatenate(dlp)
    print(f"\nfloat32 {t32:.2f} s, fp16 {t16:.2f} s for {n_edits} edits ({n_tok} tokens, groups of {a.group}): "
          f"{t32 / t16:.2f}x; same tokens in {same} of {n_edits} edits; per chosen token |Δ log p| mean "
          f"{allv.mean():.2e}, max {allv.max():.2e}; per edit |Δ sum| mean {np.mean(np.abs(dsum)):.2e}")
    print(f"fp16_decoding speedup={t32 / t16:.2f} same_tokens={same}/{n_edits} mean_abs_dlogp={allv.mean():.2e} "
          f"max_abs_dlogp={allv.max():.2e} n={n_edits}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
