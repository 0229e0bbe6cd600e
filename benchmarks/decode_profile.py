"""Where a batch-1 decode step of EARL-nano spends its time, and what smaller weights buy.

    python -m benchmarks.decode_profile [--bundle assets/earl-nano]

1. cProfile of one 16x16 edit through our sampler (one thread): share of the time in ``F.linear``,
   attention and the rest (small ops and Python).
2. One matrix-vector product per EARL-nano weight shape, fp32 vs torch's dynamic int8 quantization
   (``quantize_dynamic``, per-tensor, the x86/fbgemm engine), microseconds per call on one thread. Each
   weight is timed alone, so it stays in cache: this is not what a decoding step sees.
3. Every weight matrix of the LM in turn, as one decoding step reads them (an 18M-parameter LM's 65 MB
   of float32 weights do not fit a 32 MB L3 cache): float32 ``F.linear`` against the half-precision
   copies ``engine.sampler`` decodes with (fbgemm ``linear_dynamic_fp16``) and int8
   (``linear_dynamic``), milliseconds per token.
Last line: the machine-readable summary.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from engine.bundle import load_bundle
from engine.layout import build_prompt
from engine.sampler import sample_all


def profile_edit(bundle) -> dict[str, float]:
    prompt = build_prompt(bundle.tokenizer, np.random.RandomState(0).randint(0, bundle.config.codebook_size, (16, 16)),
                          "Make the photo grayscale.", think=False)
    sample_all(bundle, [prompt], 16, 16, [0], temperature=1.0, top_k=2048)  # warm-up
    prof = cProfile.Profile()
    prof.enable()
    sample_all(bundle, [prompt], 16, 16, [0], temperature=1.0, top_k=2048)
    prof.disable()
    st = pstats.Stats(prof)
    total = st.total_tt
    by = {"linear": 0.0, "attention": 0.0}
    for (_, _, name), (_, _, tt, _, _) in st.stats.items():
        if "linear" in name and "built-in" in name:
            by["linear"] += tt
        elif "scaled_dot_product_attention" in name:
            by["attention"] += tt
    return {"total_s": total, "linear_share": by["linear"] / total, "attention_share": by["attention"] / total}


def time_call(fn, x: torch.Tensor, reps: int = 500) -> float:
    for _ in range(20):
        fn(x)
    t = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return (time.perf_counter() - t) / reps * 1e6


def int8_table(bundle) -> list[tuple[str, float, float]]:
    lm = bundle.lm
    layer = lm.model.layers[0]
    shapes = {
        "q/k/v (fused)": (3 * layer.self_attn.q_proj.out_features, lm.config.hidden_size),
        "o_proj": (layer.self_attn.o_proj.out_features, layer.self_attn.o_proj.in_features),
        "gate/up (fused)": (2 * layer.mlp.gate_proj.out_features, lm.config.hidden_size),
        "down_proj": (layer.mlp.down_proj.out_features, layer.mlp.down_proj.in_features),
        "lm_head": (lm.lm_head.out_features, lm.lm_head.in_features),
    }
    rows = []
    for name, (out_f, in_f) in shapes.items():
        lin = torch.nn.Linear(in_f, out_f, bias=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                       dtype=torch.qint8)[0]
        x = torch.randn(1, in_f)
        with torch.inference_mode():
            rows.append((f"{name} {out_f}x{in_f}", time_call(lin, x), time_call(q, x)))
    return rows


def stream_table(bundle, reps: int = 30) -> dict[str, float]:
    """ms per token for all of the LM's weight matrices in turn (batch 1): float32, fp16 copies, int8."""
    from engine.sampler import fp16_pack

    ws = [m.weight.detach() for m in bundle.lm.modules() if isinstance(m, torch.nn.Linear)]
    xs = [torch.randn(1, w.shape[1]) for w in ws]
    half = [fp16_pack(w) for w in ws]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q8 = []
        for w in ws:
            scale = (w.abs().amax(1) / 127).clamp_min(1e-12).double()
            qw = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
            q8.append(torch.ops.quantized.linear_prepack(qw, None))
    runs = {
        "fp32": lambda: [torch.nn.functional.linear(x, w) for x, w in zip(xs, ws, strict=True)],
        "fp16": lambda: [torch.ops.quantized.linear_dynamic_fp16(x, p) for x, p in zip(xs, half, strict=True)],
        "int8": lambda: [torch.ops.quantized.linear_dynamic(x, p, True) for x, p in zip(xs, q8, strict=True)],
    }
    out = {}
    with torch.inference_mode():
        for name, fn in runs.items():
            fn()
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            out[name] = (time.perf_counter() - t) / reps * 1e3
    out["mb_fp32"] = sum(w.numel() for w in ws) * 4 / 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=str(Path(__file__).resolve().parent.parent / "assets" / "earl-nano"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    bundle = load_bundle(a.bundle, dtype=torch.float32)
    bundle.lm.eval()
    p = profile_edit(bundle)
    print(f"one edit under cProfile: {p['total_s']:.2f} s; F.linear {p['linear_share'] * 100:.0f} %, "
          f"attention {p['attention_share'] * 100:.0f} %, everything else "
          f"{(1 - p['linear_share'] - p['attention_share']) * 100:.0f} %")
    rows = int8_table(bundle)
    print(f"{'weight (out x in)':<26} {'fp32 us':>8} {'int8 us':>8} {'int8 speed-up':>14}")
    for name, f, q in rows:
        print(f"{name:<26} {f:>8.1f} {q:>8.1f} {f / q:>13.2f}x")
    fp, q8 = sum(r[1] for r in rows), sum(r[2] for r in rows)
    s = stream_table(bundle)
    print(f"all {s['mb_fp32']:.0f} MB of float32 weights in turn, per token: float32 {s['fp32']:.2f} ms, "
          f"fp16 copies {s['fp16']:.2f} ms ({s['fp32'] / s['fp16']:.2f}x), int8 {s['int8']:.2f} ms "
          f"({s['fp32'] / s['int8']:.2f}x)")
    print(f"decode_profile linear_share={p['linear_share']:.2f} attention_share={p['attention_share']:.2f} "
          f"int8_speedup_per_layer_set={fp / q8:.2f} int8_speedup_head={rows[-1][1] / rows[-1][2]:.2f} "
          f"stream_fp16_speedup={s['fp32'] / s['fp16']:.2f} stream_int8_speedup={s['fp32'] / s['int8']:.2f}")


if __name__ == "__main__":
    main()
