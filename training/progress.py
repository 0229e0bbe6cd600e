"""The JSON progress file a training job writes for whoever watches it (``training.jobs``, the studio).

``{"state": "starting|running|done|failed|cancelled", "method", "step", "steps", "loss", "reward",
"eta_s", "elapsed_s", "history": [{"step", "loss", "reward", ...}], "bundle": path when done,
"message"}`` — rewritten atomically (temp file + rename), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class Progress:
    """Writes ``path`` (no-op when ``path`` is None, e.g. on non-main processes)."""

    def __init__(self, path: str | Path | None, method: str, steps: int, start_step: int = 0,
                 history: list[dict] | None = None) -> None:
        self.path = Path(path) if path else None
        self.t0, self.start_step = time.time(), start_step
        self.data: dict[str, Any] = {"state": "starting", "method": method, "step": start_step, "steps": steps,
                                     "loss": None, "reward": None, "eta_s": None, "elapsed_s": 0.0,
                                     "history": list(history or []), "bundle": None, "message": "", "pid": os.getpid()}
        self._write()

    def step(self, step: int, **metrics: float | None) -> None:
        d = self.data
        d["state"] = "running"
        d["step"] = step
        d["elapsed_s"] = round(time.time() - self.t0, 1)
        done = step - self.start_step
        d["eta_s"] = round(d["elapsed_s"] / done * (d["steps"] - step), 1) if done > 0 else None
        for k, v in metrics.items():
            d[k] = v
        d["history"].append({"step": step, **{k: v for k, v in metrics.items() if v is not None}})
        self._write()

    def finish(self, state: str, message: str = "", **extra: Any) -> None:
        self.data.update(state=state, message=message, eta_s=0 if state == "done" else None, **extra)
        self.data["elapsed_s"] = round(time.time() - self.t0, 1)
        self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.data))
            os.replace(tmp, self.path)
        except OSError as e:
            from engine.diskspace import is_no_space

            tmp.unlink(missing_ok=True)
            if not is_no_space(e):
                raise
            # A full disk must not turn a progress report into the trainer's crash (the checkpoint decides
            # what happens); the last complete file stays, and the watcher measures the disk itself.


def read_progress(path: str | Path) -> dict[str, Any] | None:
    """The latest progress, or None when the file does not exist (yet)."""
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
