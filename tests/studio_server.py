"""The studio with a fresh tiny random model for the end-to-end and browser tests: in this process
(``studio_app``), or as ``python launch.py --tiny-demo`` in a subprocess (``studio_server``) where the
command line itself is under test."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RATER = "tester"  # the default rater name both servers start with


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_photo(path: Path, size: tuple[int, int] = (96, 64)) -> Path:
    """A real photograph (scikit-image's sample data), small, saved as PNG."""
    from skimage import data

    Image.fromarray(np.asarray(data.astronaut())).resize(size, Image.Resampling.LANCZOS).save(path)
    return path


@contextmanager
def studio_app(data_dir: Path, *extra: str) -> Iterator[str]:
    """Run the studio in this process, built from ``launch.py``'s arguments, on a free port; yields its URL."""
    import launch
    from studio.app import serve

    before = os.environ.get("EARL_RATER")
    os.environ["EARL_RATER"] = RATER
    try:
        args = launch.parse_args(["--tiny-demo", "--data", str(data_dir), *extra])
        demo, ctx = launch.build(args)
    finally:
        if before is None:
            os.environ.pop("EARL_RATER", None)
        else:
            os.environ["EARL_RATER"] = before
    url = serve(demo, ctx, host="127.0.0.1", port=free_port(), auth=launch._parse_auth(args.auth), block=False)
    try:
        yield url
    finally:
        demo.close()
        ctx.store.close()


@contextmanager
def studio_server(data_dir: Path, *extra: str, timeout_s: float = 180.0) -> Iterator[str]:
    """Run ``launch.py --tiny-demo`` in a subprocess on a free port; yields its URL. Its output goes to
    ``data_dir.parent / "studio.log"``."""
    from studio.process import launched

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "GRADIO_ANALYTICS_ENABLED": "False", "EARL_RATER": RATER}
    with launched(["--tiny-demo", "--data", str(data_dir), *extra], free_port(), data_dir.parent / "studio.log",
                  env=env, timeout_s=timeout_s) as url:
        yield url
