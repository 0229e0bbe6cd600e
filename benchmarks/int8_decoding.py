"""int8 against float32 decoding on the shipped bundle: speed, and how far the int8 model's log-probs are
from the exact model's on the very tokens it wrote.

    python benchmarks/int8_decoding.py [--bundle PATH] [--n-per-kind 2] [--kinds K,...] [--threads 2]

For held-out test samples (``training.eval.load_samples``; built from ``data/corpus`` if missing) each
prompt is decoded twice with the same seed (EARL's sampling, temperature 1, top-k 2048, no think), with
float32 and with int8 weights (``engine.sampler``). The int8 tokens are then scored exactly, teacher-
forced, by ``engine.logprobs.sequence_logprobs`` (float32, what training uses): ``|Δ log p|`` per token
is the int8 sampler's reported log-prob against the exact one, over the tokens the model chose (forced
tokens are 0 in both). Both runs decode on one thread, as ``engine.edit`` does; times are wall seconds in
this process, so the ratio is the speed-up. Same seed ≠ same tokens: a small change of the distribution
moves inverse-CDF picks, so the two runs are different samples of nearly the same model (the verifier
scores of both: ``python -m training.eval [--int8]``).
Last line: ``int8_decoding speedup=… mean_abs_dlogp=… p99_abs_dlogp=… mean_dsum=… n=…``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.bundle import default_bundle_path, load_bundle  # noqa: E402
from engine.layout import build_prompt  # noqa: E402
from engine.logprobs import sequence_logprobs  # noqa: E402
from engine.sampler import int8_available, sample_all  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None, help="bundle folder (default: the shipped assets/earl-nano)")
    ap.add_argument("--n-per-kind", type=int, default=2)
    ap.add_argument("--kinds", default=None, help="comma-separated edit kinds (default: all)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the prefill and tokenizer")
    a = ap.parse_args(argv)
    if not int8_available():
        print("this torch build has no fbgemm int8 kernels: nothing to compare")
        return 1
    torch.set_num_threads(a.threads)
    from training.eval import _fit, load_samples, sample_seed

    bundle = load_bundle(a.bundle or default_bundle_path())
    samples = load_samples(n_per_kind=a.n_per_kind, kinds=a.kinds.split(",") if a.kinds else None)
    print(f"bundle {bundle.config.name}@{bundle.config.version}, {len(samples)} test samples, torch threads {a.threads}")
    tok = bundle.tokenizer
    grids = [np.asarray(g, dtype=np.int64) for g in bundle.vq.encode([_fit(bundle, s["source"]) for s in samples])]
    prompt0 = build_prompt(tok, grids[0], samples[0]["instruction"], False)
    sample_all(bundle, [prompt0], *grids[0].shape, [0], top_k=2048, int8=True)  # packs the weights, warms up
    sample_all(bundle, [prompt0], *grids[0].shape, [0], top_k=2048)
    t32 = t8 = 0.0
    n_tok = 0
    dlp: list[np.ndarray] = []
    dsum: list[float] = []
    for s, g in zip(samples, grids, strict=True):
        h, w = g.shape
        prompt = build_prompt(tok, g, s["instruction"], False)
        seed = sample_seed(0, s["id"])
        t = time.perf_counter()
        sample_all(bundle, [prompt], h, w, [seed], top_k=2048)
        t32 += time.perf_counter() - t
        t = time.perf_counter()
        q = sample_all(bundle, [prompt], h, w, [seed], top_k=2048, int8=True)[0]
        t8 += time.perf_counter() - t
        n_tok += len(q.tokens)
        with torch.no_grad():
            exact = sequence_logprobs(bundle, [prompt], [q.tokens], h, w, False)[0, : len(q.tokens)].numpy()
        got = np.asarray(q.logprobs)
        chosen = got != 0  # forced tokens: 0 in both
        d = np.abs(got - exact)[chosen]
        dlp.append(d)
        dsum.append(float(got.sum() - exact.sum()))
        print(f"{s['kind']:<16} {s['id']:<28} tokens {len(q.tokens)}  mean |Δlp| {d.mean():.4f}  "
              f"max {d.max():.3f}  Δ sum {dsum[-1]:+.2f} (of {exact.sum():.1f})")
    allv = np.concatenate(dlp)
    print(f"\nfloat32 {t32:.2f} s, int8 {t8:.2f} s for {len(samples)} edits ({n_tok} int8 tokens): "
          f"{t32 / t8:.2f}x; per chosen token |Δ log p| mean {allv.mean():.4f}, median {np.median(allv):.4f}, "
          f"99th percentile {np.quantile(allv, 0.99):.4f}; per edit Δ sum mean {np.mean(dsum):+.3f} "
          f"(|Δ| mean {np.mean(np.abs(dsum)):.3f})")
    print(f"int8_decoding speedup={t32 / t8:.2f} mean_abs_dlogp={allv.mean():.4f} "
          f"p99_abs_dlogp={np.quantile(allv, 0.99):.4f} mean_dsum={np.mean(dsum):+.3f} n={len(samples)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
