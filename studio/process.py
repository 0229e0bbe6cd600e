"""The studio as a separate process: ``launch.py`` started with some arguments and waited for until it
serves its page, then stopped. For whatever drives a real studio from outside (benchmarks, tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

LAUNCH = Path(__file__).resolve().parents[1] / "launch.py"


@contextmanager
def launched(args: Sequence[str], port: int, log_path: Path, env: dict[str, str] | None = None,
             timeout_s: float = 180.0) -> Iterator[str]:
    """Run ``launch.py --port PORT *args`` (output to ``log_path``); yield its URL once the page answers.
    A process that exits first, or a page that does not answer in ``timeout_s``, raises with the end of
    the log. The process is terminated (killed if it lingers) on the way out."""
    env = {"GRADIO_ANALYTICS_ENABLED": "False", **(env or os.environ)}
    with open(log_path, "w+") as log:
        proc = subprocess.Popen([sys.executable, str(LAUNCH), "--port", str(port), *args], cwd=LAUNCH.parent,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
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
                    raise TimeoutError(f"the studio did not start in {timeout_s:.0f} s:\n{log.read()[-4000:]}")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
