"""Start ``launch.py --tiny-demo`` in a subprocess for the studio's end-to-end and browser tests."""

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
def studio_server(data_dir: Path, *extra: str, timeout_s: float = 180.0) -> Iterator[str]:
    """Run the studio on a free port with a fresh tiny random model; yields its URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), "GRADIO_ANALYTICS_ENABLED": "False", "EARL_RATER": "tester"}
    log = open(data_dir.parent / f"studio-{port}.log", "w+")  # noqa: SIM115 - closed below
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
