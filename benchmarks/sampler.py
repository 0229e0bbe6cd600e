"""Sampler speed: our KV-cached loop vs transformers' ``generate`` on the same model and constraint.

    python -m benchmarks.sampler [--reps 1] [--threads N]

EARL-nano as shipped (``--bundle``, default ``assets/earl-nano``: 5.9M parameters, vocab 5,399), or with
``--random`` the randomly initialised 18M-parameter model this benchmark used before EARL-nano's size was
chosen (hidden 384, 6 layers, vocab ~5200 = 4096 visual + text/special); one 16x16 edit (prompt ~290 tokens, 280 generated tokens), no
think, temperature 1, top-k 2048. ``generate`` gets the equivalent constraint through
``prefix_allowed_tokens_fn`` (``FreeFormConstraint.prefix_allowed_tokens_fn``, O(1) per call, returning
precomputed id tensors). ``generate`` cannot add EARL-nano's 2-D grid embedding (it takes token ids),
so it runs the same LM without it: slightly less work than ours, which adds it as the product does. Both run in this process with torch's default thread count; our sampler
decodes small models on one thread internally (see ``engine.sampler``), so the table also shows
``generate`` on one thread, for a like-for-like reading. Where ``engine.edit`` decodes with fp16 weights
by default (a small float32 LM on a CPU with fbgemm: half-precision weights in the decoding steps), ours also runs that way (rows "fp16"). tok/s = generated tokens / wall time
(prefill included), best of ``--reps``. A ``generate`` run stops after ``--max-time`` seconds (its
``max_time``) to keep the script short on a busy machine: its rate is then tokens so far / time.
Last line: the machine-readable summary.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Emu3ForCausalLM

from engine.bundle import Bundle, BundleConfig
from engine.constraint import FreeFormConstraint
from engine.layout import build_prompt, parse_generation
from engine.sampler import fp16_default, num_threads, sample_all
from engine.text_tokenizer import build_nano_tokenizer
from engine.tiny import TINY_TEXTS, tiny_lm_config

H = W = 16
CODEBOOK = 4096
VOCAB = 5200


def load_nano(path: str) -> Bundle:
    from engine.bundle import load_bundle

    bundle = load_bundle(path, dtype=torch.float32)
    bundle.lm.eval()
    return bundle


def make_bundle(seed: int = 0) -> Bundle:
    tok = build_nano_tokenizer(TINY_TEXTS, CODEBOOK, 1024)
    cfg = tiny_lm_config(tok, hidden=384, layers=6, heads=6, kv_heads=6, intermediate=1536)
    cfg.vocab_size = max(VOCAB, len(tok))  # the real nano text vocabulary is ~1100 tokens
    torch.manual_seed(seed)
    lm = Emu3ForCausalLM(cfg).eval()
    config = BundleConfig(name="bench-random", codebook_size=CODEBOOK)
    return Bundle(config=config, lm=lm, tokenizer=tok, vq=None, grid_embed=None)


def run_ours(bundle: Bundle, prompt: list[int], batch: int, threads: int | None,
             fp16: bool = False) -> tuple[float, list[list[int]]]:
    t = time.perf_counter()
    gens = sample_all(bundle, [prompt] * batch, H, W, list(range(batch)), temperature=1.0, top_k=2048,
                      threads=threads, fp16=fp16)
    dt = time.perf_counter() - t
    return sum(len(g.tokens) for g in gens) / dt, [g.tokens for g in gens]


MAX_TIME = 40.0


def run_hf(bundle: Bundle, prompt: list[int], batch: int, threads: int | None,
           max_new_tokens: int | None = None, hw: tuple[int, int] = (H, W),
           temperature: float = 1.0) -> tuple[float, list[list[int]]]:
    con = FreeFormConstraint(bundle.tokenizer, *hw, False, vocab_size=bundle.lm.config.vocab_size)
    ids = torch.tensor([prompt] * batch)
    with num_threads(threads), torch.inference_mode():
        t = time.perf_counter()
        out = bundle.lm.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=temperature, top_k=2048, top_p=1.0,
            max_new_tokens=max_new_tokens or con.max_new_tokens, max_time=MAX_TIME, prefix_allowed_tokens_fn=con.prefix_allowed_tokens_fn(len(prompt)),
            eos_token_id=con.sp.eos, pad_token_id=con.sp.pad,
        )
        dt = time.perf_counter() - t
    gens = [row[len(prompt):].tolist() for row in out]
    gens = [g[: g.index(con.sp.eos) + 1] if con.sp.eos in g else g for g in gens]
    return sum(len(g) for g in gens) / dt, gens


def best(fn, reps: int, *args) -> float:
    rates = []
    eos = args[0].tokenizer.convert_tokens_to_ids("<|extra_204|>")
    for _ in range(reps):
        rate, gens = fn(*args)
        for g in gens:  # every complete output must be a full 16x16 grid
            if g and g[-1] == eos:
                parse_generation(args[0].tokenizer, g, expect_hw=(H, W))
        rates.append(rate)
    return max(rates)


def main() -> None:
    global MAX_TIME
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--max-time", type=float, default=MAX_TIME, help="seconds per generate run at most")
    ap.add_argument("--bundle", default=str(Path(__file__).resolve().parent.parent / "assets" / "earl-nano"))
    ap.add_argument("--random", action="store_true", help="the random 18M model instead of a bundle")
    args = ap.parse_args()
    MAX_TIME = args.max_time
    if args.threads:
        torch.set_num_threads(args.threads)
    default_threads = torch.get_num_threads()
    bundle = make_bundle() if args.random else load_nano(args.bundle)
    n_params = sum(p.numel() for p in bundle.lm.parameters())
    codebook = bundle.config.codebook_size
    prompt = build_prompt(bundle.tokenizer, np.random.RandomState(0).randint(0, codebook, (H, W)),
                          "Make the photo grayscale.", think=False)
    print(f"model: {bundle.config.name}, Emu3ForCausalLM {n_params / 1e6:.1f}M params, vocab {bundle.lm.config.vocab_size}, "
          f"prompt {len(prompt)} tokens, {H}x{W} grid; torch threads {default_threads}")
    # warm-up (allocator, oneDNN kernels) for both paths
    sample_all(bundle, [prompt], H, W, [0], temperature=1.0, top_k=2048)
    run_hf(bundle, prompt, 1, None, 20)

    rows = []
    res = {}
    for b in (1, 8):
        res[f"ours_b{b}"] = best(run_ours, args.reps, bundle, prompt, b, None)
        rows.append(("ours (auto threads: 1)", b, res[f"ours_b{b}"]))
        res[f"hf_b{b}"] = best(run_hf, args.reps, bundle, prompt, b, None)
        rows.append((f"generate ({default_threads} threads, default)", b, res[f"hf_b{b}"]))
    res["hf1_b1"] = best(run_hf, args.reps, bundle, prompt, 1, 1)
    rows.append(("generate (1 thread)", 1, res["hf1_b1"]))
    res["ours_dt_b1"] = best(run_ours, args.reps, bundle, prompt, 1, default_threads)
    rows.append((f"ours ({default_threads} threads)", 1, res["ours_dt_b1"]))
    if fp16_default(bundle):  # engine.edit's default here: fp16 decoding weights
        run_ours(bundle, prompt, 1, None, True)  # packs the fp16 weights (cached per model)
        for b in (1, 8):
            res[f"fp16_b{b}"] = best(run_ours, args.reps, bundle, prompt, b, None, True)
            rows.append(("ours, fp16 (engine.edit's default)", b, res[f"fp16_b{b}"]))

    print(f"{'sampler':<34} {'batch':>5} {'tok/s':>9}")
    for name, b, rate in rows:
        print(f"{name:<34} {b:>5} {rate:>9.1f}")
    print(f"like-for-like at 1 thread, batch 1: ours / generate = {res['ours_b1'] / res['hf1_b1']:.2f}x")
    fp16 = ""
    if "fp16_b1" in res:
        print(f"fp16 decoding, batch 1: {res['fp16_b1'] / res['ours_b1']:.2f}x float32; "
              f"{res['fp16_b1'] / res['hf_b1']:.2f}x generate")
        fp16 = (f" fp16_tok_s_b1={res['fp16_b1']:.1f} fp16_tok_s_b8={res['fp16_b8']:.1f}"
                f" fp16_speedup_b1={res['fp16_b1'] / res['hf_b1']:.2f} fp16_speedup_b8={res['fp16_b8'] / res['hf_b8']:.2f}")
    print(
        f"sampler tok_s_b1={res['ours_b1']:.1f} tok_s_b8={res['ours_b8']:.1f} hf_tok_s_b1={res['hf_b1']:.1f} "
        f"hf_tok_s_b8={res['hf_b8']:.1f} speedup_b1={res['ours_b1'] / res['hf_b1']:.2f} "
        f"speedup_b8={res['ours_b8'] / res['hf_b8']:.2f}{fp16}"
    )


if __name__ == "__main__":
    main()
