"""Pre-tokenise the editing suite with a trained image tokenizer, so SFT spends its time in the LM.

    python -m training.data.pretokenize --vq runs/vq/final --out data/sft_cache --samples 8000

Two stages, so the slow part (rendering edits) can run while the image tokenizer is still training:
``raw_XXXXX.pt`` holds rendered samples (uint8 pixels + texts), ``shard_XXXXX.pt`` their codes.
``--raw-only`` stops after the first stage. Shards hold records {src, tgt: uint16 (H, W) code grids, instructions:
[several phrasings], reasoning, keep_reasoning, kind, params, changed: (H, W) bool, the cells whose pixels
the edit changed (None when the shape changes)}. Shard i is generated from seed (seed, i), so the cache is
reproducible and an interrupted run resumes by skipping the shards already written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine.vq import NanoVQ
from training.common import write_atomic

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
    """Every record of a cache folder, or of several: ``"a,b"`` (e.g. a general cache and one of a few kinds)."""
    recs: list[dict] = []
    for one in filter(None, (f.strip() for f in str(folder).split(","))):
        for f in sorted(Path(one).glob("shard_*.pt")):
            recs.extend(torch.load(f, weights_only=False))
    return recs


def raw_records(samples: list[dict], n_phrasings: int, rng: np.random.Generator) -> list[dict]:
    from training.data.suite import rephrase

    out = []
    for s in samples:
        phr = [s["instruction"]] + [rephrase(s, rng) for _ in range(n_phrasings - 1)]
        out.append({
            "source": np.asarray(s["source"].convert("RGB")), "target": np.asarray(s["target"].convert("RGB")),
            "instructions": sorted(set(phr), key=phr.index), "reasoning": s["reasoning"], "kind": s["kind"],
            "params": s.get("params", {}),  # e.g. a zoom's window, for training.targets
        })
    return out


@torch.inference_mode()
def encode_arrays(vq: NanoVQ, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Same-shaped (H, W, 3) uint8 images -> code grids; what ``vq.encode`` gives for them as PIL images,
    without the PIL round trip (pixels go to the tokenizer's device as uint8, a quarter of the bytes)."""
    x = torch.from_numpy(np.stack(arrays)).to(vq.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return list(vq.codes_from_latents(vq.encode_latents(x.to(vq.dtype))).cpu().numpy())


def encode_records(vq: NanoVQ, raw: list[dict], batch: int = 64) -> list[dict]:
    """Raw records -> cache records (code grids), in the same order."""
    from engine.vq import same_size_groups
    from training.targets import changed_cells

    factor = vq.spatial_factor

    out: dict[int, dict] = {}
    for group in same_size_groups([r["source"] for r in raw]):
        for i in range(0, len(group), batch):
            idx = group[i : i + batch]
            srcs = encode_arrays(vq, [raw[k]["source"] for k in idx])
            tgts: dict[int, np.ndarray] = {}
            for tg in same_size_groups([raw[k]["target"] for k in idx]):  # a rotation changes the shape
                tgts.update(zip(tg, encode_arrays(vq, [raw[idx[j]]["target"] for j in tg]), strict=True))
            for j, k in enumerate(idx):
                r, src = raw[k], srcs[j]
                out[k] = {
                    "src": src.astype(np.uint16), "tgt": tgts[j].astype(np.uint16), "instructions": r["instructions"],
                    "reasoning": r["reasoning"], "keep_reasoning": keep_reasoning(*src.shape), "kind": r["kind"],
                    "params": r.get("params", {}),
                    "changed": changed_cells(r["source"], r["target"], factor),
                }
    return [out[k] for k in range(len(raw))]


def mark_changed(folder: str | Path, factor: int = 8) -> int:
    """Give the records of a cache written before ``changed`` existed that field, from the rendered
    samples beside them (``raw_XXXXX.pt``); returns how many records got it."""
    from training.targets import changed_cells

    n = 0
    for path in sorted(Path(folder).glob("shard_*.pt")):
        recs = torch.load(path, weights_only=False)
        raw_path = path.with_name(path.name.replace("shard_", "raw_"))
        if all("changed" in r for r in recs) or not raw_path.exists():
            continue
        kinds = {r["kind"] for r in recs}
        raw = [r for r in torch.load(raw_path, weights_only=False) if r["kind"] in kinds]  # --kinds filtered
        if [r["kind"] for r in raw] != [r["kind"] for r in recs]:
            raise SystemExit(f"{path}: its records do not match {raw_path.name}")
        for rec, r in zip(recs, raw, strict=True):
            rec["changed"] = changed_cells(r["source"], r["target"], factor)
        _save_atomic(recs, path)
        n += len(recs)
    return n


def _save_atomic(obj: object, path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


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
    ap.add_argument("--raw-from", default=None, metavar="DIR",
                    help="encode the rendered samples of another cache folder (same samples, another tokenizer)")
    ap.add_argument("--kinds", default=None, metavar="K,K,…",
                    help="only these edit kinds: new samples are drawn from them, rendered ones (--raw-from) filtered")
    ap.add_argument("--mark-changed", action="store_true",
                    help="add the 'changed' cells to the records of an older cache (--out) and stop")
    args = ap.parse_args()
    if args.mark_changed:
        n = mark_changed(args.out, NanoVQ.from_pretrained(args.vq).spatial_factor)
        print(f"pretokenize marked {n} records in {args.out}")
        return
    torch.set_num_threads(args.threads)
    from training.data.suite import require_corpus, stream

    if not args.raw_from:
        require_corpus(args.corpus)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vq = None if args.raw_only else NanoVQ.from_pretrained(args.vq).eval()
    n_shards = -(-args.samples // args.shard_size)
    bar = tqdm(total=n_shards * args.shard_size, desc="pretokenize", dynamic_ncols=True)
    kinds = set(args.kinds.split(",")) if args.kinds else None
    for k in range(n_shards):
        raw_path, path = Path(args.raw_from or out) / f"raw_{k:05d}.pt", out / f"shard_{k:05d}.pt"
        if path.exists() or (args.raw_only and raw_path.exists()):
            bar.update(args.shard_size)
            continue
        if raw_path.exists():
            raw = torch.load(raw_path, weights_only=False)
        elif args.raw_from:
            raise SystemExit(f"--raw-from {args.raw_from} has no {raw_path.name}")
        else:
            gen = stream("train", seed=args.seed * 100_003 + k, corpus=args.corpus,
                         kinds=sorted(kinds) if kinds else None)
            rng = np.random.default_rng([args.seed, k])
            raw = raw_records([next(gen) for _ in range(args.shard_size)], args.phrasings, rng)
            _save_atomic(raw, raw_path)
        if vq is not None:
            _save_atomic(encode_records(vq, [r for r in raw if kinds is None or r["kind"] in kinds]), path)
        bar.update(args.shard_size)
    bar.close()
    print(f"pretokenize shards={n_shards} samples={n_shards * args.shard_size} out={out}")


if __name__ == "__main__":
    main()
