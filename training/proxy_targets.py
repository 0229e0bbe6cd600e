"""SFT targets an editing model can learn where the true target codes are out of its reach.

A 2× zoom's true target is the tokenizer's code for each *upscaled quarter* of a source cell: a code the
source grid does not contain, so it is not a copy from anywhere, and EARL-nano learnt none of it (held-out
zoom 0.00 after every stage up to v0.5, ceiling 7.45). Copying each source cell into the 2×2 block of
target cells it turns into (nearest-neighbour upscaling of the code grid) is a positional copy, the kind
of mapping the model did learn for flips and quarter turns, and through the tokenizer it already scores
3.8 of the ceiling's 7.5 on the held-out zooms (``python -m training.proxy_targets``). SFT on those
targets, then RL on the true verifier reward, is the plan (``train_sft --zoom-targets copy``).
"""

from __future__ import annotations

import argparse

import numpy as np

from training.edits.kinds import ZOOM_CENTRES


def zoom_copy(src: np.ndarray, params: dict) -> np.ndarray:
    """The source code grid zoomed like ``ops.zoom`` (same window), each target cell reading the source
    cell under its centre."""
    h, w = src.shape
    factor = float(params.get("factor", 2.0))
    cx, cy = ZOOM_CENTRES[params["where"]]
    # ops.zoom's window, in cell units
    x0 = min(max(cx * w - w / factor / 2, 0.0), w - w / factor)
    y0 = min(max(cy * h - h / factor / 2, 0.0), h - h / factor)
    rows = np.clip(np.floor(y0 + (np.arange(h) + 0.5) / factor).astype(int), 0, h - 1)
    cols = np.clip(np.floor(x0 + (np.arange(w) + 0.5) / factor).astype(int), 0, w - 1)
    return src[rows][:, cols]


def apply_zoom_copy(records: list[dict]) -> int:
    """Replace the targets of zoom records (which carry their ``params``) by ``zoom_copy`` of the source,
    in place; returns how many were replaced. Records without params are left alone."""
    n = 0
    for r in records:
        if r.get("kind") == "zoom" and r.get("params"):
            r["tgt"] = zoom_copy(r["src"], r["params"]).astype(r["tgt"].dtype)
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    """Score the copy targets and the true ones (the ceiling) on the held-out zooms, both through the
    tokenizer; with ``--model`` also the bundle's own zooms."""
    from engine.bundle import load_bundle
    from training.eval import _fit, _score, load_samples

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="assets/earl-nano")
    ap.add_argument("--split", default="test", choices=["test", "val"])
    ap.add_argument("--model", action="store_true",
                    help="also edit each zoom with the bundle's LM: how many of its codes equal the copy target's")
    ap.add_argument("--temperature", type=float, default=0.0, help="with --model (0: greedy); seeds as training.eval's")
    args = ap.parse_args(argv)
    bundle = load_bundle(args.bundle)
    samples = load_samples(split=args.split, kinds=["zoom"])
    proxy, ceiling, agree, model = [], [], [], []
    for s in samples:
        src = bundle.vq.encode([_fit(bundle, s["source"])])[0]
        tgt = bundle.vq.encode([_fit(bundle, s["target"])])[0]
        copy = zoom_copy(src, s["params"])
        proxy.append(_score(s, bundle.vq.decode([copy])[0]).overall)
        ceiling.append(_score(s, bundle.vq.decode([tgt])[0]).overall)
        line = f"{s['id']}  {s['params']['where']:12s}  copy {proxy[-1]:.2f}  tokenizer ceiling {ceiling[-1]:.2f}"
        if args.model:
            out = _model_grid(bundle, src, s, args.temperature)
            agree.append(float((out == copy).mean()))
            model.append(_score(s, bundle.vq.decode([out])[0]).overall)
            line += f"  model {model[-1]:.2f} (codes equal to the copy's: {agree[-1]:.1%})"
        print(line)
    extra = f" model={np.mean(model):.3f} agreement={np.mean(agree):.4f}" if args.model else ""
    print(f"proxy_targets zoom_copy={np.mean(proxy):.3f} ceiling={np.mean(ceiling):.3f}{extra} n={len(samples)}")
    return 0


def _model_grid(bundle, src: np.ndarray, sample: dict, temperature: float) -> np.ndarray:
    from engine.layout import build_prompt, parse_generation
    from engine.sampler import fp16_default, sample_all
    from training.eval import EARL_TOP_K, sample_seed

    h, w = src.shape
    prompt = build_prompt(bundle.tokenizer, src, sample["instruction"], False)
    gen = sample_all(bundle, [prompt], h, w, [sample_seed(0, sample["id"])], temperature=temperature,
                     top_k=EARL_TOP_K, fp16=fp16_default(bundle))[0]
    return parse_generation(bundle.tokenizer, gen.tokens, expect_hw=(h, w))[1]


if __name__ == "__main__":
    raise SystemExit(main())
