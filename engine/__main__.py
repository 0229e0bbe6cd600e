"""Command line: ``python -m engine edit [--bundle PATH] --image in.jpg "instruction" -o out.png``.

Streams the reasoning (think mode) to the terminal, shows a progress bar over image rows and writes
``out.png`` (``out_1.png``, ``out_2.png``, … for the other candidates when ``--n`` > 1): the edit at the
photo's own resolution (``engine.render``), or with ``--raw`` the model's own output at its resolution.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine", description="EARL Studio engine")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("edit", help="edit a photo with an instruction")
    e.add_argument("instruction", help="what to change, e.g. \"make it grayscale\"")
    e.add_argument("--image", required=True, help="input photo")
    e.add_argument("-o", "--output", required=True, help="output PNG (candidate 0; others get _1, _2, …)")
    e.add_argument("--bundle", default=None, help="bundle folder (default: the shipped EARL-nano bundle)")
    e.add_argument("--seed", type=int, default=None, help="seed of candidate 0 (candidate i uses seed + i)")
    e.add_argument("--n", type=int, default=1, help="number of candidates")
    e.add_argument("--think", action="store_true", help="reason in text before drawing")
    e.add_argument("--temperature", type=float, default=1.0)
    e.add_argument("--top-k", type=int, default=2048)
    e.add_argument("--top-p", type=float, default=1.0)
    e.add_argument("--cfg-text", type=float, default=1.0)
    e.add_argument("--cfg-image", type=float, default=1.0)
    e.add_argument("--max-new-tokens", type=int, default=None)
    e.add_argument("--transpose", action=argparse.BooleanOptionalAction, default=None,
                   help="let the model turn a non-square photo on its side (a landscape photo may come out portrait); "
                        "default: when the bundle was trained to choose")
    e.add_argument("--raw", action="store_true",
                   help="write the model's own output (model resolution) instead of the full-resolution render")
    return p


def output_paths(output: str | Path, n: int) -> list[Path]:
    out = Path(output)
    if out.suffix.lower() != ".png":
        out = out.with_suffix(".png")
    return [out] + [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(1, n)]


def _edit(args: argparse.Namespace) -> int:
    from engine.bundle import BundleError, default_bundle_path, load_bundle

    path = Path(args.bundle) if args.bundle else default_bundle_path()
    if args.bundle is None and not path.exists():
        print(f"error: no bundle given and the default EARL-nano bundle is not at {path} yet. "
              "Train or download one, or pass --bundle PATH.", file=sys.stderr)
        return 2
    if not Path(args.image).exists():
        print(f"error: input image not found: {args.image}", file=sys.stderr)
        return 2
    try:
        bundle = load_bundle(path)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from engine.api import edit
    from engine.events import Done, Error, ImageRow, Text
    from engine.image_io import ImageInputError, bundle_aspects, fit_to_bundle, load_image, prepare_image

    area, factor = bundle.config.image_area, bundle.vq.spatial_factor
    try:
        image = (prepare_image(args.image, area, factor, aspects=bundle_aspects(bundle)) if args.raw
                 else load_image(args.image))
    except ImageInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fitted = fit_to_bundle(bundle, image)
    rows, cols = fitted.height // factor, fitted.width // factor

    outs = output_paths(args.output, args.n)
    for o in outs:
        o.parent.mkdir(parents=True, exist_ok=True)
    bar = None
    texting = False
    status = 0
    for ev in edit(bundle, image, args.instruction, n=args.n, think=args.think, seed=args.seed,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, cfg_text=args.cfg_text,
                   cfg_image=args.cfg_image, max_new_tokens=args.max_new_tokens, full_resolution=not args.raw,
                   transpose=args.transpose):
        if isinstance(ev, Text):
            if ev.candidate == 0:  # stream one candidate's reasoning live; the others print when done
                sys.stdout.write(ev.delta)
                sys.stdout.flush()
                texting = True
        elif isinstance(ev, ImageRow):
            if bar is None:
                if texting:
                    sys.stdout.write("\n")
                bar = tqdm(total=rows * args.n, unit="row", desc="rows", file=sys.stderr)
            if ev.row == 0 and len(ev.codes) != cols:  # a candidate turned on its side: W rows, not H
                bar.total += cols - rows
            bar.update(1)
        elif isinstance(ev, Done):
            out = ev.image if args.raw or ev.full is None else ev.full
            out.save(outs[ev.candidate])
            msg = (f"candidate {ev.candidate}: seed {ev.seed} -> {outs[ev.candidate]} {out.width}×{out.height} "
                   f"({ev.timings['total']:.2f} s)")
            if not args.raw and ev.render:
                msg += f" [{ev.render.get('method')}]"
            if ev.candidate and ev.reasoning:
                msg += f"\n  reasoning: {ev.reasoning}"
            (bar.write if bar is not None else print)(msg)
        elif isinstance(ev, Error):
            print(f"error: {ev.message}", file=sys.stderr)
            status = 1
    if bar is not None:
        bar.close()
    return status


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "edit":
        return _edit(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
