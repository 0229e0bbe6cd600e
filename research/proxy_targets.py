"""Score the SFT proxy targets of ``training.targets`` against the true targets (the ceiling), both
through the tokenizer; with ``--model``, also the bundle's own edits.

    python -m research.proxy_targets [--kinds zoom | object | K,...] [--fill | --no-jitter] [--model]

An added object is drawn at its named position plus a random offset that the instruction does not say
(``edits.kinds.placed``), while the verifier wants the ground truth's edges within a pixel or two.
``unjittered_target`` draws the object at the named position itself: the best an edit that follows the
words can do (``--kinds add_shape,add_stamp --no-jitter``).
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from training.data.edits import KINDS
from training.targets import changed_cells, fill_from_outside, pin_local, zoom_copy

JITTERED_KINDS = ("add_shape", "add_stamp")


def unjittered_target(sample: dict) -> Image.Image:
    """The target of an added object drawn at the named position without the sample's random offset."""
    if sample["kind"] not in JITTERED_KINDS:
        raise ValueError(f"{sample['kind']!r} has no unsaid offset: only {', '.join(JITTERED_KINDS)} do")
    p = sample["params"]
    params = {**p, "add": {**p["add"], "jitter": (0.0, 0.0)}}
    return KINDS[sample["kind"]].render(sample["source"], params).target


def main(argv: list[str] | None = None) -> int:
    """Score the proxy targets and the true ones (the ceiling) on held-out samples, both through the
    tokenizer; with ``--model`` also the bundle's own edits."""
    from engine.bundle import load_bundle
    from engine.image_io import fit_to_bundle
    from training.eval import _score, load_samples
    from training.train_sft import focus_set

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="assets/earl-nano")
    ap.add_argument("--split", default="test", choices=["test", "val"])
    ap.add_argument("--kinds", default="zoom",
                    help="zoom (copy targets), or local edit kinds / the category 'object' (pinned targets)")
    ap.add_argument("--grow", type=int, default=1, help="pinned targets: cells kept around the changed ones")
    which = ap.add_mutually_exclusive_group()  # one proxy per run: --no-jitter would silently win over --fill
    which.add_argument("--fill", action="store_true",
                       help="local edits: fill the changed cells from the nearest unchanged source cell instead of pinning")
    which.add_argument("--no-jitter", action="store_true",
                       help="added objects: draw them at the named position, without the unsaid random offset")
    ap.add_argument("--model", action="store_true",
                    help="also edit each sample with the bundle's LM: how many of its codes equal the proxy's")
    ap.add_argument("--temperature", type=float, default=0.0, help="with --model (0: greedy); seeds as training.eval's")
    args = ap.parse_args(argv)
    kinds = sorted(focus_set(args.kinds))
    if args.no_jitter and set(kinds) - set(JITTERED_KINDS):
        raise SystemExit(f"--no-jitter: only {', '.join(JITTERED_KINDS)} carry an unsaid offset")
    bundle = load_bundle(args.bundle)
    samples = load_samples(split=args.split, kinds=kinds)
    proxy, ceiling, agree, model, moved = [], [], [], [], []
    for s in samples:
        src_img, tgt_img = fit_to_bundle(bundle, s["source"]), fit_to_bundle(bundle, s["target"])
        src, tgt = bundle.vq.encode([src_img])[0], bundle.vq.encode([tgt_img])[0]
        if args.no_jitter:
            proxy_grid, what = bundle.vq.encode([fit_to_bundle(bundle, unjittered_target(s))])[0], s["kind"]
        elif s["kind"] == "zoom":
            proxy_grid, what = zoom_copy(src, s["params"]), s["params"]["where"]
        else:
            ch = changed_cells(np.asarray(src_img), np.asarray(tgt_img), bundle.vq.spatial_factor)
            if ch is None:
                proxy_grid = tgt
            else:
                proxy_grid = fill_from_outside(src, ch) if args.fill else pin_local(src, tgt, ch, args.grow)
            what = s["kind"]
            if ch is not None:
                moved.append((float((tgt != src).mean()), float((proxy_grid != src).mean()), float(ch.mean())))
        proxy.append(_score(s, bundle.vq.decode([proxy_grid])[0]).overall)
        ceiling.append(_score(s, bundle.vq.decode([tgt])[0]).overall)
        line = f"{s['id']}  {what:12s}  proxy {proxy[-1]:.2f}  tokenizer ceiling {ceiling[-1]:.2f}"
        if args.model:
            out = _model_grid(bundle, src, s, args.temperature)
            agree.append(float((out == proxy_grid).mean()) if out.shape == proxy_grid.shape else 0.0)
            model.append(_score(s, bundle.vq.decode([out])[0]).overall)
            line += f"  model {model[-1]:.2f} (codes equal to the proxy's: {agree[-1]:.1%})"
        print(line)
    if moved:
        t, p, c = np.mean(moved, axis=0)
        print(f"codes differing from the source: target {t:.1%}, pinned {p:.1%}; cells whose pixels changed {c:.1%}")
    name = "zoom_copy" if kinds == ["zoom"] else "proxy"
    extra = f" model={np.mean(model):.3f} agreement={np.mean(agree):.4f}" if args.model else ""
    print(f"proxy_targets {name}={np.mean(proxy):.3f} ceiling={np.mean(ceiling):.3f}{extra} n={len(samples)}")
    return 0


def _model_grid(bundle, src: np.ndarray, sample: dict, temperature: float) -> np.ndarray:
    from engine.generate import generate
    from engine.sampler import fp16_default
    from training.eval import EARL_TOP_K, sample_seed

    e = generate(bundle, [src], [sample["instruction"]], [sample_seed(0, sample["id"])], temperature=temperature,
                 top_k=EARL_TOP_K, fp16=fp16_default(bundle), decode=False)[0]
    if e.grid is None:
        raise ValueError(e.error)
    return e.grid


if __name__ == "__main__":
    raise SystemExit(main())
