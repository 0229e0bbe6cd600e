"""Start EARL Studio: ``python launch.py`` (shipped EARL-nano bundle, http://127.0.0.1:7860).

Examples::

    python launch.py --data ~/earl-data                  # keep ratings somewhere else
    python launch.py --bundle /path/to/bundle            # a fine-tuned or EARL/Emu3 bundle folder
    python launch.py --host 0.0.0.0 --auth alice:secret  # on the network: always with a password
    python launch.py --tiny-demo                         # a tiny random model: try the UI, run tests
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a local tool
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads weights at run time

ROOT = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from studio.tempfiles import TEMP_CAP_BYTES  # no heavy imports: --help stays quick

    p = argparse.ArgumentParser(description="EARL Studio: edit photos with words, rate, fine-tune.")
    p.add_argument("--bundle", type=Path, default=None,
                   help="model bundle folder (default: the shipped assets/earl-nano)")
    p.add_argument("--data", type=Path, default=None,
                   help="data folder for ratings, images and fine-tuned bundles (default: ~/.earl-studio)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    p.add_argument("--auth", default=None, metavar="USER:PASS",
                   help="require this username and password (ratings are then stored under USER)")
    p.add_argument("--share", action="store_true",
                   help="also open a public gradio.live link (off by default; needs internet)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload (default 20)")
    p.add_argument("--temp-cap-mb", type=float, default=TEMP_CAP_BYTES / 2**20,
                   help="disk for uploads, previews and download files; the least recently used go first "
                        f"(default {TEMP_CAP_BYTES // 2**20})")
    p.add_argument("--tiny-demo", action="store_true",
                   help="run on a freshly made tiny random model (edits are noise; for trying the UI and tests)")
    p.add_argument("--examples", type=Path, default=ROOT / "assets" / "examples",
                   help="folder of example photos offered in the UI")
    return p.parse_args(argv)


def _parse_auth(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        sys.exit("--auth needs USER:PASS, e.g. --auth alice:correct-horse")
    return user, password


def _free_port(host: str, start: int = 7860) -> int:
    for port in range(start, start + 100):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    sys.exit(f"no free port in {start}..{start + 99} on {host}; pass --port")


def build(args: argparse.Namespace):  # -> tuple[gr.Blocks, StudioContext]
    from engine.bundle import default_bundle_path
    from feedback.store import Store, StoreError, default_data_dir
    from studio.app import StudioContext, build_app
    from studio.models import TINY_DEMO_KEY, ModelRegistry

    data = (args.data or default_data_dir()).expanduser()
    try:
        store = Store(data)
    except StoreError as e:  # read-only, missing, full or locked: say which folder and what to do
        sys.exit(f"error: {e}")
    preloaded = {}
    default_key: str | None = None
    no_model = ""
    shipped = default_bundle_path()
    if args.tiny_demo:
        from engine.tiny import make_tiny_random_bundle

        preloaded[TINY_DEMO_KEY] = make_tiny_random_bundle(name="tiny-demo")
        default_key = TINY_DEMO_KEY
    registry = ModelRegistry(data, default_path=shipped, preloaded=preloaded)
    if args.bundle is not None:
        try:
            default_key = registry.add_path(args.bundle)
            registry.get(default_key)  # fail now, with the reason, rather than on the first edit
        except ValueError as e:
            sys.exit(f"--bundle: {e}")
    elif default_key is None:
        if (shipped / "bundle.json").is_file():
            default_key = f"path:{shipped.resolve()}"
        else:
            no_model = (
                f"No default model: the shipped EARL-nano bundle is not at {shipped} yet. "
                "Start with `--bundle /path/to/bundle` (a folder holding bundle.json), pick a fine-tuned "
                f"bundle from {data / 'bundles'} under “Model”, or try the UI with `--tiny-demo`."
            )
            others = registry.choices()
            if others:
                default_key = others[0].key
                no_model = ""
            else:
                print(f"warning: {no_model}", file=sys.stderr)
    ctx = StudioContext(
        store=store, registry=registry, default_model=default_key,
        examples_dir=args.examples if args.examples and args.examples.is_dir() else None,
        auth_enabled=args.auth is not None, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        temp_cap_bytes=int(args.temp_cap_mb * 1024 * 1024),
        no_model_message=no_model,
    )
    return build_app(ctx), ctx


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    auth = _parse_auth(args.auth)
    if args.host not in ("127.0.0.1", "localhost", "::1") and auth is None:
        print(f"warning: listening on {args.host} without --auth: anyone who can reach it can use it "
              "and rate as anyone.", file=sys.stderr)
    from feedback.store import StoreError, check_data_dir, default_data_dir

    try:  # before the slow imports: a data folder that cannot be written is refused at once
        check_data_dir((args.data or default_data_dir()).expanduser())
    except StoreError as e:
        sys.exit(f"error: {e}")
    from studio.app import serve

    demo, ctx = build(args)
    port = args.port or _free_port(args.host)
    print(f"EARL Studio: data in {ctx.data_dir}; model {ctx.default_model or '(none)'}", flush=True)
    serve(demo, ctx, host=args.host, port=port, share=args.share, auth=auth)


if __name__ == "__main__":
    main()
