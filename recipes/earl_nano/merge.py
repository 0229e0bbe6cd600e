"""Interpolate the weights of two bundles of the same model: ``(1 - alpha) · base + alpha · tuned``.

Fine-tuning a model on a narrow mix teaches it something new and costs some of what it knew: a small
CPU cache cannot hold everything the earlier stages showed it. Moving only part of the way from the
parent towards the fine-tuned weights (WiSE-FT: Wortsman et al., "Robust fine-tuning of zero-shot
models", 2022) keeps most of both; ``alpha`` picks the trade, chosen on the val split
(recipes/earl_nano/README.md; the measurements are in research/LOG.md).

    python -m recipes.earl_nano.merge --base assets/earl-nano --tuned runs/route13-bundle --alpha 0.9 --out runs/v06

Both bundles must share the tokenizer, the image tokenizer and the LM's shape (the tuned one started from
the base); the merged bundle keeps them and records its parents.
"""

from __future__ import annotations

import argparse

import torch

from engine.bundle import Bundle, load_bundle, save_bundle


def interpolate(base: torch.nn.Module, tuned: torch.nn.Module, alpha: float) -> dict[str, torch.Tensor]:
    """``tuned``'s state dict moved to ``(1 - alpha) · base + alpha · tuned``: floating tensors in float32,
    others (integer buffers) kept as they are."""
    b, t = base.state_dict(), tuned.state_dict()
    if b.keys() != t.keys():
        raise ValueError(f"the models differ in their tensors: {sorted(b.keys() ^ t.keys())[:5]}")
    out = {}
    for k, v in t.items():
        if b[k].shape != v.shape:
            raise ValueError(f"{k}: shape {tuple(b[k].shape)} in the base, {tuple(v.shape)} in the tuned model")
        out[k] = (1 - alpha) * b[k].float() + alpha * v.float() if v.is_floating_point() else v
    return out


def merge_bundles(base: Bundle, tuned: Bundle, alpha: float) -> Bundle:
    """``tuned`` with its LM and grid embedding interpolated towards ``base`` (in place; returned)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if base.tokenizer.get_vocab() != tuned.tokenizer.get_vocab():
        raise ValueError("the bundles have different text tokenizers")
    vb, vt = base.vq.state_dict(), tuned.vq.state_dict()
    if vb.keys() != vt.keys() or any(not torch.equal(vb[k].float(), vt[k].float()) for k in vb):
        raise ValueError("the bundles have different image tokenizers: their codes mean different things")
    if (base.grid_embed is None) != (tuned.grid_embed is None):
        raise ValueError("one bundle has a grid embedding and the other has none")
    tuned.lm.load_state_dict(interpolate(base.lm, tuned.lm, alpha))
    if tuned.grid_embed is not None:
        tuned.grid_embed.load_state_dict(interpolate(base.grid_embed, tuned.grid_embed, alpha))
    return tuned


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the parent bundle")
    ap.add_argument("--tuned", required=True, help="a bundle fine-tuned from it")
    ap.add_argument("--alpha", type=float, required=True, help="0: the base, 1: the tuned bundle")
    ap.add_argument("--out", required=True)
    ap.add_argument("--version", default=None, help="the merged bundle's version (default: the tuned one's)")
    args = ap.parse_args(argv)
    base = load_bundle(args.base, dtype=torch.float32)
    tuned = load_bundle(args.tuned, dtype=torch.float32)
    merged = merge_bundles(base, tuned, args.alpha)
    cfg = merged.config
    cfg.parent = f"{base.config.name}@{base.config.version}"
    cfg.notes = {**cfg.notes, "merge": f"(1 - {args.alpha}) * {args.base} + {args.alpha} * {args.tuned} "
                 "(recipes/earl_nano/merge.py)", "parent_weights_hash": base.weights_hash()}
    if args.version:
        cfg.version = args.version
    save_bundle(merged, args.out)
    print(f"merged alpha={args.alpha} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
