"""What every part of the studio page shares: the store, the model registry, the rater's name and the
folders the page may serve."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from feedback.store import Store
from studio.imaging import PngFiles
from studio.models import ModelRegistry
from studio.runner import EditFn
from studio.tempfiles import TEMP_CAP_BYTES, TempFiles


def default_rater() -> str:
    """The name ratings are stored under when nobody typed one: ``$EARL_RATER``, else the OS user."""
    return os.environ.get("EARL_RATER") or os.environ.get("USER") or "local"


@dataclass
class StudioContext:
    store: Store
    registry: ModelRegistry
    default_model: str | None  # registry key selected at start (None: nothing to run yet)
    examples_dir: Path | None = None
    edit_fn: EditFn | None = None  # engine.edit unless a caller injects another
    auth_enabled: bool = False
    max_upload_bytes: int = 20 * 1024 * 1024
    no_model_message: str = ""  # shown when default_model is None
    temp_cap_bytes: int = TEMP_CAP_BYTES  # Gradio's cache + previews + exports (``studio.tempfiles``)
    _cancels: dict[str, threading.Event] = field(default_factory=dict)
    _previews: PngFiles | None = None
    _temp: TempFiles | None = None
    # the page's one "Rater" box (above the tabs), set by build_app so tabs rate under the same name
    rater_box: Any = None

    @property
    def previews(self) -> PngFiles:
        if self._previews is None:
            self._previews = PngFiles(self.store.data_dir / "previews")
        return self._previews

    @property
    def temp(self) -> TempFiles:
        """The page's temp files (previews, download files, its uploads in Gradio's cache), under one cap."""
        if self._temp is None:
            self._temp = TempFiles([self.previews.folder, self.exports_dir], max_bytes=self.temp_cap_bytes)
        return self._temp

    @property
    def data_dir(self) -> Path:
        return self.store.data_dir

    @property
    def exports_dir(self) -> Path:
        d = self.store.data_dir / "exports"
        d.mkdir(exist_ok=True)
        return d

    def rater(self, request: gr.Request | None, typed: str | None) -> str:
        """The logged-in user when auth is on, else the name typed in the rater box."""
        user = getattr(request, "username", None) if request is not None else None
        if user:
            return str(user)
        return (typed or "").strip() or default_rater()

    def examples(self) -> list[str]:
        if self.examples_dir is None or not self.examples_dir.is_dir():
            return []
        exts = {".png", ".jpg", ".jpeg", ".webp"}
        return [str(p) for p in sorted(self.examples_dir.iterdir()) if p.suffix.lower() in exts][:24]
