"""The studio with a fresh tiny random model for the end-to-end and browser tests: in this process
(``studio_app``), or as ``python launch.py --tiny-demo`` in a subprocess (``studio_server``) where the
command line itself is under test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
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
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "GRADIO_ANALYTICS_ENABLED": "False", "EARL_RATER": RATER}
    log = open(data_dir.parent / "studio.log", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "--tiny-demo", "--data", str(data_dir), "--port", str(port), *extra],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"launch.py exited with {proc.returncode}:\n{log.read()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                raise TimeoutError(f"studio did not start in {timeout_s} s:\n{log.read()[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
