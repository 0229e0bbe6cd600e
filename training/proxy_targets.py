"""SFT targets an editing model can learn where the true target codes are out of its reach.

A 2× zoom's true target is the tokenizer's code for each *upscaled quarter* of a source cell: a code the
source grid does not contain, so it is not a copy from anywhere, and EARL-nano learnt none of it (held-out
zoom 0.00 after every stage up to v0.5, ceiling 7.45). Copying each source cell into the 2×2 block of
target cells it turns into (nearest-neighbour upscaling of the code grid) is a positional copy, the kind
of mapping the model did learn for flips and quarter turns, and through the tokenizer it already scores
3.8 of the ceiling's 7.5 on the held-out zooms (``python -m training.proxy_targets``). SFT on those
targets, then RL on the true verifier reward, is the plan (``train_sft --zoom-targets copy``).

Local edits (objects) have the opposite problem: the tokenizer's encoder sees past its 8×8 cell, so drawing
a shape changes the codes of cells whose pixels did not change. On the held-out object edits 27 % of the
target's codes differ from the source's where only 9 % of the cells' pixels changed: the other codes are
changes the LM has to guess and that the picture does not need. ``pin_local`` keeps the target's codes
on the cells whose pixels changed (and their 8 neighbours) and the source's everywhere else, which through
the tokenizer scores as the true target does (``python -m training.proxy_targets --kinds object``):
everything outside the edit becomes an exact copy (``train_sft --object-targets pin``).

An added object is drawn at its named position plus a random offset of up to 4 % of the photo's side
(``edits.kinds.placed``: about 5 px at 128²) that the instruction does not say, while the verifier wants the
ground truth's edges within a pixel or two. ``unjittered_target`` draws the object at the named position
itself: the best an edit that follows the words can do (``python -m training.proxy_targets --kinds
add_shape,add_stamp --no-jitter``).
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation

from training.edits import KINDS
from training.edits.kinds import mask_cells
from training.routing import nearest_unchanged, zoom_cells

# A cell counts as changed when some pixel moved by more than this (sum over RGB, 0–765): rendering an
# edit leaves untouched pixels exactly equal, so this only ignores rounding.
PIXEL_CHANGE = 12


def zoom_copy(src: np.ndarray, params: dict) -> np.ndarray:
    """The source code grid zoomed like ``ops.zoom`` (same window), each target cell reading the source
    cell under its centre."""
    rows, cols = zoom_cells(*src.shape, params)
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


def changed_cells(src: np.ndarray, tgt: np.ndarray, factor: int) -> np.ndarray | None:
    """(H, W) bool: which ``factor``-pixel cells of two same-sized (h, w, 3) uint8 images differ; None when
    the sizes differ (a quarter turn)."""
    if src.shape != tgt.shape:
        return None
    h, w = src.shape[0] // factor, src.shape[1] // factor
    d = np.abs(src.astype(np.int16) - tgt.astype(np.int16)).sum(-1) > PIXEL_CHANGE
    return mask_cells(d[: h * factor, : w * factor], factor)  # whole cells only, as the code grid


def pin_local(src: np.ndarray, tgt: np.ndarray, changed: np.ndarray, grow: int = 1) -> np.ndarray:
    """``tgt`` on the changed cells grown by ``grow`` cells (8-neighbourhood), ``src`` elsewhere."""
    m = changed.astype(bool)
    if grow > 0:
        m = binary_dilation(m, structure=np.ones((3, 3), bool), iterations=grow)
    return np.where(m, tgt, src)


def fill_from_outside(src: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """Each changed cell takes the source code of the nearest unchanged cell: a positional copy (like
    ``zoom_copy``) that stands in for what a removed object hid (``--fill``)."""
    if changed.all():
        return src.copy()
    rows, cols = nearest_unchanged(changed)
    return src[rows, cols]


def _local_records(records: list[dict], kind: str | None = None):
    """The records of a local edit (``kind`` only, if given) that carry ``changed`` (pretokenize writes
    it), with the cells it changed. Global edits and flips change every cell, quarter turns the shape."""
    for r in records:
        ch = r.get("changed")
        if (kind is None or r.get("kind") == kind) and ch is not None and r["src"].shape == r["tgt"].shape \
                and not ch.all():
            yield r, ch


def apply_remove_fill(records: list[dict]) -> int:
    """``fill_from_outside`` the targets of ``remove`` records, in place; returns how many changed."""
    n = 0
    for r, ch in _local_records(records, "remove"):
        r["tgt"] = fill_from_outside(r["src"], ch).astype(r["tgt"].dtype)
        n += 1
    return n


def apply_pin_local(records: list[dict], grow: int = 1) -> int:
    """``pin_local`` the targets of local edits, in place; returns how many changed."""
    n = 0
    for r, ch in _local_records(records):
        r["tgt"] = pin_local(r["src"], r["tgt"], ch, grow).astype(r["tgt"].dtype)
        n += 1
    return n


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
    from training.eval import _fit, _score, load_samples
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
        src_img, tgt_img = _fit(bundle, s["source"]), _fit(bundle, s["target"])
        src, tgt = bundle.vq.encode([src_img])[0], bundle.vq.encode([tgt_img])[0]
        if args.no_jitter:
            proxy_grid, what = bundle.vq.encode([_fit(bundle, unjittered_target(s))])[0], s["kind"]
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
