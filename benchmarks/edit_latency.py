"""Latency of one 128² edit on CPU: time to the first ``Preview`` and to the last ``Done`` (docs/ARCHITECTURE.md §8).

    python -m benchmarks.edit_latency [--bundle PATH | --random] [--reps 3] [--threads 2] [--ns 1,4]
                                      [--instruction TEXT] [--speculate K] [--profile out.prof]

Bundle: ``--bundle``, else the shipped ``assets/earl-nano`` when it exists, else a randomly initialised
model of the nano shape (``Emu3ForCausalLM`` hidden 256, 4 layers, 4 heads, MLP 688, vocab 4375 visual
+ 1024 text + structural; a ``NanoVQ`` with (64, 128, 128) channels and FSQ levels 7·5·5·5·5; the 2-D grid
embedding). A random model's edit takes as many steps as a trained one's: every edit without reasoning
is exactly 4 + H·(W+1) + 3 tokens under the constraint; think mode adds the reasoning.

One photo (scikit-image's astronaut), prepared to a 16×16 grid, instruction "make the photo grayscale"
(``--instruction``: e.g. an object edit, which speculative decoding speeds up; ``--speculate``: engine.edit's
default of 16 guesses per pass, 0 for one token per pass), ``engine.edit`` with EARL's sampling (temperature 1, top-k 2048), previews every 2 rows, torch on
``--threads`` threads (the sampler itself decodes small models on one). Times are seconds from the
call (image preparation and encoding included), medians of ``--reps`` runs after one warm-up run. The
``cpu`` columns are the process's CPU seconds over the same spans: on a machine shared with other work
(e.g. a training job) wall times measure the contention, while CPU seconds estimate what an idle core
would take (the sampler and, for small image tokenizers, ``engine.edit``'s encode / decode run on one
thread; ``--threads`` then matters only for bigger models).
Targets: first preview < 0.5 s, finished < 2 s (n = 1). ``--profile`` writes a cProfile of one n=1 edit.
Last line (n = 1, the last weights timed): ``edit_latency first_preview_s=… total_s=… n=1 weights=fp16``.
``--fp16 both`` (default) times float32 then fp16 decoding in this process and prints the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from engine.bundle import Bundle

TARGET_PREVIEW_S = 0.5
TARGET_TOTAL_S = 2.0
INSTRUCTION = "make the photo grayscale"


def random_nano_bundle(seed: int = 0) -> Bundle:
    """A randomly initialised bundle of EARL-nano's shape (training.train_sft / train_vq defaults)."""
    from transformers import Emu3ForCausalLM

    from engine.bundle import BundleConfig
    from engine.grid_embed import GridEmbedding
    from engine.text_tokenizer import build_nano_tokenizer
    from engine.tiny import TINY_TEXTS, tiny_lm_config
    from engine.vq import NanoVQ

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vq = NanoVQ(block_out_channels=(64, 128, 128), fsq_levels=(7, 5, 5, 5, 5)).eval()
        tok = build_nano_tokenizer(TINY_TEXTS, vq.codebook_size, 1024)
        cfg = tiny_lm_config(tok, hidden=256, layers=4, heads=4, kv_heads=4, intermediate=688)
        # the benchmark texts learn fewer BPE merges than the real corpus: pad to the real vocabulary size
        cfg.vocab_size = max(len(tok), vq.codebook_size + 1024 + 10)
        lm = Emu3ForCausalLM(cfg).eval()
        ge = GridEmbedding(256).eval()
    config = BundleConfig(family="earl-nano", name="nano-random", version="0", image_area=128 * 128,
                          spatial_factor=vq.spatial_factor, codebook_size=vq.codebook_size)
    return Bundle(config=config, lm=lm, tokenizer=tok, vq=vq, grid_embed=ge, path=None)


def photo():
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut())


def one_edit(bundle: Bundle, image, n: int, seed: int, think: bool, preview_every: int = 2,
             fp16: bool | None = None, instruction: str = INSTRUCTION, speculate: int | None = None) -> dict[str, float]:
    """Run one edit to the end; seconds from the call to the first Preview (any candidate) and the last Done."""
    from engine.api import DEFAULT_SPECULATE, edit
    from engine.events import Done, Error, Preview

    t0, c0 = time.perf_counter(), time.process_time()
    first_preview = cpu_preview = None
    done = 0
    tokens = 0
    for ev in edit(bundle, image, instruction, n=n, think=think, seed=seed, temperature=1.0, top_k=2048,
                   preview_every=preview_every, fp16=fp16,
                   speculate=DEFAULT_SPECULATE if speculate is None else speculate):
        if isinstance(ev, Error):
            raise RuntimeError(ev.message)
        if isinstance(ev, Preview) and first_preview is None:
            first_preview = time.perf_counter() - t0
            cpu_preview = time.process_time() - c0
        if isinstance(ev, Done):
            done += 1
            tokens += len(ev.tokens)
            prepare = ev.timings["prepare"]
            first_token = ev.timings["first_token"]
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    if done != n:
        raise RuntimeError(f"{done} of {n} candidates finished")
    return {"prepare": prepare, "first_token": first_token, "first_preview": first_preview or total,
            "total": total, "tok_s": tokens / total, "cpu_preview": cpu_preview or cpu, "cpu_total": cpu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None, help="bundle folder (default: assets/earl-nano if present)")
    ap.add_argument("--random", action="store_true", help="use the randomly initialised nano-shaped model")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ns", default="1,4", help="candidate counts to time (comma-separated)")
    ap.add_argument("--think", action="store_true")
    ap.add_argument("--preview-every", type=int, default=2, help="engine.edit's preview_every (its default: 2)")
    ap.add_argument("--profile", default=None, help="write a cProfile of one n=1 edit here")
    ap.add_argument("--instruction", default=INSTRUCTION)
    ap.add_argument("--speculate", type=int, default=None, help="engine.edit's speculate (default: its default)")
    ap.add_argument("--fp16", choices=["auto", "on", "off", "both"], default="both",
                    help="engine.edit's fp16 decoding: its default (auto), forced, off, or off then on in "
                         "this process (both, the default: the ratio is the speed-up)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from engine.bundle import default_bundle_path, load_bundle

    path = Path(a.bundle) if a.bundle else default_bundle_path()
    t = time.perf_counter()
    if not a.random and (path / "bundle.json").exists():
        bundle = load_bundle(path)
        what = f"{bundle.config.name}@{bundle.config.version} ({path})"
    else:
        bundle = random_nano_bundle()
        what = "randomly initialised nano-shaped model"
    t_load = time.perf_counter() - t
    n_params = sum(p.numel() for p in bundle.lm.parameters())
    img = photo()
    from engine.image_io import prepare_image

    h, w = (s // bundle.vq.spatial_factor for s in prepare_image(img, bundle.config.image_area,
                                                                   bundle.vq.spatial_factor).size[::-1])
    print(f"bundle: {what}, {n_params / 1e6:.1f}M LM parameters, vocab {bundle.lm.config.vocab_size}, "
          f"grid {h}x{w}, torch threads {a.threads}, loaded in {t_load:.2f} s, think={a.think}, "
          f"preview every {a.preview_every} rows, {a.instruction!r}, speculate {a.speculate if a.speculate is not None else 'default'}")

    ns = [int(x) for x in a.ns.split(",")]
    modes = {"auto": [None], "on": [True], "off": [False], "both": [False, True]}[a.fp16]
    rows = {}
    for mode in modes:
        for n in ns:
            kw = dict(instruction=a.instruction, speculate=a.speculate)
            one_edit(bundle, img, n, 0, a.think, a.preview_every, mode, **kw)  # warm-up (allocations, fp16 packing)
            runs = [one_edit(bundle, img, n, 1 + r, a.think, a.preview_every, mode, **kw) for r in range(a.reps)]
            rows[mode, n] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    label = {None: "auto", True: "fp16", False: "fp32"}
    print(f"\n{'weights':>7s} {'n':>3s} {'prepare':>8s} {'1st token':>9s} {'1st preview':>11s} {'done':>7s} "
          f"{'tok/s':>7s} {'cpu preview':>11s} {'cpu done':>8s}")
    for (mode, n), r in rows.items():
        print(f"{label[mode]:>7s} {n:3d} {r['prepare']:8.3f} {r['first_token']:9.3f} {r['first_preview']:11.3f} "
              f"{r['total']:7.3f} {r['tok_s']:7.0f} {r['cpu_preview']:11.3f} {r['cpu_total']:8.3f}")
    print(f"(seconds from the call, median of {a.reps}; cpu = process CPU seconds, all threads: on a busy machine "
          f"it estimates the wall time on an idle core; targets for n=1: first preview < {TARGET_PREVIEW_S} s, "
          f"done < {TARGET_TOTAL_S} s)")
    if a.fp16 == "both":
        for n in ns:
            print(f"fp16 speed-up n={n}: done {rows[False, n]['total'] / rows[True, n]['total']:.2f}x, "
                  f"first preview {rows[False, n]['first_preview'] / rows[True, n]['first_preview']:.2f}x")

    if a.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        one_edit(bundle, img, 1, 99, a.think, a.preview_every, modes[-1], a.instruction, a.speculate)
        prof.disable()
        prof.dump_stats(a.profile)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)

    n0 = 1 if 1 in ns else ns[0]
    base = rows[modes[-1], n0]
    ok = base["first_preview"] < TARGET_PREVIEW_S and base["total"] < TARGET_TOTAL_S
    print(f"targets {'met' if ok else 'MISSED'}")
    print(f"edit_latency first_preview_s={base['first_preview']:.3f} total_s={base['total']:.3f} n={n0} "
          f"weights={label[modes[-1]]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


