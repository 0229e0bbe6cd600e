"""CPU time to prepare one SFT batch: vectorised over the batch, against one sequence at a time.

    python -m benchmarks.sft_batch_prep [--bundle assets/earl-nano] [--cache data/sft_cache] [--batch 256]
                                        [--reps 5]

On a GPU the step is short, so the Python that turns cached code grids into a padded batch (prompts,
targets, grid features, constraint mask rows) decides the step time. This prints, per batch:

- ``collate``: ``training.train_sft.sft_batch`` (the vectorised ``engine.logprobs.collate``);
- ``per_sequence``: the same work done one sequence at a time through the one-sequence APIs
  (``layout.grid_positions``, ``FreeFormConstraint.replay``, a tensor per row), the way batches were
  built before ``collate`` (baseline, same process).

For scale: a step of EARL-nano at batch 256 took about 200 ms on an H200 (``recipes/earl_nano/device_sft.sh``'s log).

Samples come from ``--cache`` (``training.data.pretokenize``). Medians of ``--reps`` batches after one warm-up.
Last line: ``sft_batch_prep collate_ms=… per_sequence_ms=… speedup=… batch=…``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from engine.bundle import load_bundle
from engine.constraint import constraint_for
from engine.layout import build_prompt, build_target, grid_positions
from training.train_sft import Batcher, SFTConfig, sft_batch


def per_sequence(tok: object, con: object, think: bool, items: list) -> None:
    """The baseline: one-sequence calls and one tensor per row, as the loop over a batch did."""
    for s, t, ins, rsn, *_ in items:
        p = build_prompt(tok, s, ins, think)
        g = build_target(tok, t, rsn if think else None)
        grid_positions(tok, p)
        con.replay(g)
        torch.tensor(p + g)


def samples(cache: str) -> list[dict]:
    from training.data.pretokenize import load_cache

    if not Path(cache).is_dir():
        raise SystemExit(f"no pre-tokenised samples in {cache!r}: run python -m training.data.pretokenize first")
    return load_cache(cache)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="assets/earl-nano")
    ap.add_argument("--cache", default="data/sft_cache")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    bundle = load_bundle(args.bundle, dtype=torch.float32)
    tok, vocab = bundle.tokenizer, bundle.lm.config.vocab_size
    cfg = SFTConfig(batch_size=args.batch)
    batcher = Batcher(samples(args.cache), cfg, seed=0)
    t_col, t_seq = [], []
    for rep in range(args.reps + 1):
        shape, think, items = batcher.next()
        con = constraint_for(tok, *shape, think, vocab, transpose=cfg.transpose)  # as train_sft.next_batch
        t0 = time.perf_counter()
        sft_batch(tok, con, think, items)
        t1 = time.perf_counter()
        per_sequence(tok, con, think, items)
        t2 = time.perf_counter()
        if rep:  # the first batch warms caches (tokenizer, constraint tables)
            t_col.append(t1 - t0)
            t_seq.append(t2 - t1)
    col, seq = (1000 * statistics.median(x) for x in (t_col, t_seq))
    print(f"batch {args.batch}, median of {args.reps} batches, 1 torch thread")
    print(f"sft_batch_prep collate_ms={col:.1f} per_sequence_ms={seq:.1f} speedup={seq / col:.2f} batch={args.batch}")


if __name__ == "__main__":
    main()
