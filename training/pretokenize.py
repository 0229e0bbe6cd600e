"""Pre-tokenise the editing suite with a trained image tokenizer, so SFT spends its time in the LM.

    python -m training.pretokenize --vq runs/vq/final --out data/sft_cache --samples 8000

Two stages, so the slow part (rendering edits) can run while the image tokenizer is still training:
``raw_XXXXX.pt`` holds rendered samples (uint8 pixels + texts), ``shard_XXXXX.pt`` their codes.
``--raw-only`` stops after the first stage. Shards hold records {src, tgt: uint16 (H, W) code grids, instructions:
[several phrasings], reasoning, keep_reasoning, kind}. Shard i is generated from seed (seed, i), so the
cache is reproducible and an interrupted run resumes by skipping the shards already written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine.vq import NanoVQ

# Identity edits: copying the aligned source position underlies every edit.
KEEP_PHRASINGS = [
    "Keep the photo as it is.",
    "Leave the image unchanged.",
    "Don't change anything.",
    "Return the same picture.",
    "No edit: keep everything as it is.",
]


def keep_reasoning(h: int, w: int) -> str:
    return f"Nothing to change. Keep all of the {h}x{w} grid exactly as in the source."


def load_cache(folder: str | Path) -> list[dict]:
    recs: list[dict] = []
    for f in sorted(Path(folder).glob("shard_*.pt")):
        recs.extend(torch.load(f, weights_only=False))
    return recs


def raw_records(samples: list[dict], n_phrasings: int, rng: np.random.Generator) -> list[dict]:
    from training.suite import rephrase

    out = []
    for s in samples:
        phr = [s["instruction"]] + [rephrase(s, rng) for _ in range(n_phrasings - 1)]
        out.append({
            "source": np.asarray(s["source"].convert("RGB")), "target": np.asarray(s["target"].convert("RGB")),
            "instructions": sorted(set(phr), key=phr.index), "reasoning": s["reasoning"], "kind": s["kind"],
        })
    return out


def encode_records(vq: NanoVQ, raw: list[dict], batch: int = 64) -> list[dict]:
    from PIL import Image

    out = []
    for i in range(0, len(raw), batch):
        part = raw[i : i + batch]
        grids = vq.encode([Image.fromarray(r["source"]) for r in part] + [Image.fromarray(r["target"]) for r in part])
        for j, r in enumerate(part):
            src, tgt = grids[j], grids[len(part) + j]
            out.append({
                "src": src.astype(np.uint16), "tgt": tgt.astype(np.uint16), "instructions": r["instructions"],
                "reasoning": r["reasoning"], "keep_reasoning": keep_reasoning(*src.shape), "kind": r["kind"],
            })
    return out


def _save_atomic(obj: object, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vq", default="runs/vq/final")
    ap.add_argument("--out", default="data/sft_cache")
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--samples", type=int, default=8000)
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--phrasings", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--raw-only", action="store_true", help="render samples only (no image tokenizer needed)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from training.suite import stream

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vq = None if args.raw_only else NanoVQ.from_pretrained(args.vq).eval()
    n_shards = -(-args.samples // args.shard_size)
    bar = tqdm(total=n_shards * args.shard_size, desc="pretokenize", dynamic_ncols=True)
    for k in range(n_shards):
        raw_path, path = out / f"raw_{k:05d}.pt", out / f"shard_{k:05d}.pt"
        if path.exists() or (args.raw_only and raw_path.exists()):
            bar.update(args.shard_size)
            continue
        if raw_path.exists():
            raw = torch.load(raw_path, weights_only=False)
        else:
            gen = stream("train", seed=args.seed * 100_003 + k, corpus=args.corpus)
            rng = np.random.default_rng([args.seed, k])
            raw = raw_records([next(gen) for _ in range(args.shard_size)], args.phrasings, rng)
            _save_atomic(raw, raw_path)
        if vq is not None:
            _save_atomic(encode_records(vq, raw), path)
        bar.update(args.shard_size)
    bar.close()
    print(f"pretokenize shards={n_shards} samples={n_shards * args.shard_size} out={out}")


if __name__ == "__main__":
    main()
