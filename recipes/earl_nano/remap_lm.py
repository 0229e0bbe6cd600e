"""Move a trained LM onto a new image tokenizer of the same codebook size, by how their codes co-occur.

    python -m recipes.earl_nano.remap_lm --bundle <v0.4> --vq <equivariant tokenizer> --out runs/remapped

A new tokenizer's code c means nothing to an LM trained on the old one: the codes of the two are
unrelated numbers (few codes agree on the same photos). But
both describe the same 8×8 cells. Encoding the same photos with both gives, for each new code c, the old
codes seen in its cells, P(old | c). The new code's input embedding and output row become the
P(old | c)-weighted means of the old ones, so the LM starts from what it knew about such cells (colours
above all) instead of from random vectors. Everything else (attention, MLPs, text, the grid embedding)
is kept. The result is a bundle with the new ``vq/``, meant as the start of SFT (`train_sft --init`),
not as a finished model: a cell whose new code mixes several old ones gets a blurred embedding.

Photos come from the suite's train split (sources and targets of all edit kinds), so no held-out photo
is seen.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch
from tqdm import tqdm

from engine.bundle import Bundle, load_bundle, save_bundle
from engine.layout import special_ids
from engine.vq import ImageTokenizer, NanoVQ, same_size_groups
from training.data.pretokenize import encode_arrays


def cooccurrence(old: NanoVQ, new: NanoVQ, images: list[np.ndarray], k: int, batch: int = 32) -> np.ndarray:
    """counts[new_code, old_code] over every cell of ``images`` (uint8 H×W×3 arrays)."""
    counts = np.zeros(k * k, dtype=np.int64)
    groups = same_size_groups(images)
    with tqdm(total=len(images), desc="encode", unit="img") as bar:
        for group in groups:
            for i in range(0, len(group), batch):
                arrs = [images[j] for j in group[i : i + batch]]
                a = np.stack(encode_arrays(old, arrs)).astype(np.int64).ravel()
                b = np.stack(encode_arrays(new, arrs)).astype(np.int64).ravel()
                counts += np.bincount(b * k + a, minlength=k * k)
                bar.update(len(arrs))
    return counts.reshape(k, k)


def remap_rows(weight: torch.Tensor, visual_ids: torch.Tensor, counts: np.ndarray) -> tuple[torch.Tensor, int]:
    """``weight`` with each visual row replaced by the P(old | new)-weighted mean of the old visual rows.

    A new code never seen gets the mean over all cells (the marginal of the old codes). Returns the new
    weight and the number of such unseen codes."""
    c = torch.from_numpy(counts).double()
    seen = c.sum(1) > 0
    marginal = c.sum(0) / c.sum()
    p = torch.where(seen[:, None], c / c.sum(1, keepdim=True).clamp_min(1), marginal[None, :])
    old = weight[visual_ids].double()
    out = weight.detach().clone()
    out[visual_ids] = (p @ old).to(weight.dtype)
    return out, int((~seen).sum())


def remap_bundle(bundle: Bundle, new: ImageTokenizer, counts: np.ndarray) -> dict[str, float]:
    """Put ``new`` into ``bundle`` in place, with the LM's visual rows moved by ``counts``
    (``cooccurrence(bundle.vq, new, …)``); the bundle's version and notes say so."""
    vis = special_ids(bundle.tokenizer).visual_ids
    emb = bundle.lm.get_input_embeddings()
    head = bundle.lm.get_output_embeddings()
    with torch.no_grad():
        w, unseen = remap_rows(emb.weight, vis, counts)
        emb.weight.copy_(w)
        if head is not None and head.weight.data_ptr() != emb.weight.data_ptr():
            head.weight.copy_(remap_rows(head.weight, vis, counts)[0])
    stats = {"cells": int(counts.sum()), "unseen_codes": unseen,
             # the share of cells whose old code is their new code's commonest one: 1 for a relabelling
             "top_share": round(float(counts.max(1).sum() / max(counts.sum(), 1)), 4)}
    bundle.vq = new
    bundle.config = dataclasses.replace(
        bundle.config, parent=f"{bundle.config.name}@{bundle.config.version}",
        version=f"{bundle.config.version}-remapped",
        notes={**bundle.config.notes, **{f"remap_{k}": v for k, v in stats.items()}})
    return stats


def train_images(n: int, corpus: str | None, seed: int) -> list[np.ndarray]:
    from training.data.suite import stream

    gen = stream("train", seed=seed, corpus=corpus)
    images = []
    for _ in tqdm(range(n), desc="render", unit="sample"):
        s = next(gen)
        images += [np.asarray(s["source"].convert("RGB")), np.asarray(s["target"].convert("RGB"))]
    return images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="assets/earl-nano", help="the trained bundle (old tokenizer)")
    ap.add_argument("--vq", required=True, help="the new image tokenizer's folder")
    ap.add_argument("--out", required=True, help="where to write the remapped bundle")
    ap.add_argument("--samples", type=int, default=1500, help="suite train samples (source + target each)")
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    bundle = load_bundle(a.bundle, dtype=torch.float32)
    new = NanoVQ.from_pretrained(a.vq).eval().float()
    k = bundle.config.codebook_size
    if new.codebook_size != k:
        raise SystemExit(f"codebook sizes differ: bundle {k}, {a.vq} {new.codebook_size}")
    counts = cooccurrence(bundle.vq, new, train_images(a.samples, a.corpus, a.seed), k)
    stats = remap_bundle(bundle, new, counts)
    bundle.config.notes["remapped_from"] = a.bundle
    bundle.config.notes["image_tokenizer_from"] = a.vq
    save_bundle(bundle, a.out)
    print(json.dumps({**stats, "seconds": round(time.time() - t0, 1)}))
    print(f"remap cells={stats['cells']} unseen={stats['unseen_codes']} top_share={stats['top_share']} out={a.out}")


if __name__ == "__main__":
    main()
