"""The model picker: the shipped bundle, fine-tuned bundles in ``<data>/bundles/``, or a folder path.

Bundles are loaded lazily and cached (a couple at most: each holds an LM in memory)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedback.record import bundle_id

TINY_DEMO_KEY = "mem:tiny-demo"


@dataclass
class ModelChoice:
    key: str  # "path:/abs/folder" or "mem:<name>"
    label: str


def _is_bundle(folder: Path) -> bool:
    return folder.is_dir() and (folder / "bundle.json").is_file()


def _skip_reason(folder: Path) -> str | None:
    """Why a folder in ``<data>/bundles/`` is not offered in the picker (None: it is offered)."""
    if folder.name.startswith("."):
        # save_bundle writes into ".<name>.<random>" and renames it into place at the end; a folder
        # still named so is what a killed save left (".<name>.old": a replaced bundle not yet deleted).
        return "left by an interrupted save (a temporary folder); safe to delete, then save or export again"
    from engine.bundle import bundle_problem

    problem = bundle_problem(folder)
    return None if problem is None else f"incomplete: {problem}"


class ModelRegistry:
    """Finds and loads bundles. ``preloaded`` maps a ``mem:`` key to an in-memory bundle
    (``--tiny-demo``); ``default_path`` is the shipped bundle (may not exist yet)."""

    def __init__(
        self,
        data_dir: Path,
        default_path: Path | None = None,
        preloaded: dict[str, Any] | None = None,
        cache_size: int = 2,
    ) -> None:
        self.bundles_dir = Path(data_dir) / "bundles"
        self.default_path = default_path
        self._preloaded = dict(preloaded or {})
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._extra: list[Path] = []  # folders the user pointed at in this process
        # folders in bundles_dir left out of the last choices(), with why (shown under the picker)
        self.skipped: list[tuple[Path, str]] = []

    def dropdown_choices(self) -> list[tuple[str, str]]:
        """``choices`` as a model picker lists them: (label, key)."""
        return [(c.label, c.key) for c in self.choices()]

    def choices(self) -> list[ModelChoice]:
        out: list[ModelChoice] = []
        for key, b in self._preloaded.items():
            out.append(ModelChoice(key, f"{bundle_id(b)} (in memory{', random weights' if 'tiny' in key else ''})"))
        if self.default_path is not None and _is_bundle(self.default_path):
            out.append(ModelChoice(f"path:{self.default_path.resolve()}", f"{self.default_path.name} (shipped)"))
        skipped: list[tuple[Path, str]] = []
        if self.bundles_dir.is_dir():
            for folder in sorted(self.bundles_dir.iterdir()):
                if not folder.is_dir():
                    continue
                why = _skip_reason(folder)
                if why is None:
                    out.append(ModelChoice(f"path:{folder.resolve()}", f"{folder.name} (fine-tuned)"))
                else:
                    skipped.append((folder, why))
        self.skipped = skipped
        for folder in self._extra:
            key = f"path:{folder}"
            if all(c.key != key for c in out):
                out.append(ModelChoice(key, f"{folder.name} ({folder})"))
        return out

    def skipped_message(self) -> str:
        """Markdown naming the bundle folders the last ``choices()`` left out, and why ("" if none)."""
        return "".join(f"<br>⚠️ Not offered: `{f.name}` in {f.parent} — {why}" for f, why in self.skipped)

    def add_path(self, path: str | Path) -> str:
        """Register a bundle folder typed by the user; returns its key. Raises ValueError if it isn't one."""
        folder = Path(str(path).strip()).expanduser()
        if not str(path).strip():
            raise ValueError("Type the path of a bundle folder (the one holding bundle.json).")
        if not folder.is_dir():
            raise ValueError(f"No folder at {folder}.")
        if not _is_bundle(folder):
            raise ValueError(f"{folder} is not a bundle: it has no bundle.json.")
        folder = folder.resolve()
        if folder not in self._extra:
            self._extra.append(folder)
        return f"path:{folder}"

    def get(self, key: str) -> Any:
        """The bundle for ``key`` (loaded on first use). Raises ValueError with a readable message."""
        if key in self._preloaded:
            return self._preloaded[key]
        if not key.startswith("path:"):
            raise ValueError(f"Unknown model {key!r}.")
        with self._lock:  # two sessions asking for the same bundle load it once
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            from engine.bundle import load_bundle

            try:
                bundle = load_bundle(key[5:])
            except Exception as e:  # surfaced in the UI as a warning, not a traceback
                raise ValueError(f"Could not load the bundle at {key[5:]}: {e}") from e
            self._cache[key] = bundle
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return bundle

    def describe(self, bundle: Any) -> str:
        c = bundle.config
        n = sum(p.numel() for p in bundle.lm.parameters())
        side = int(round(c.image_area**0.5))
        parent = f" · fine-tuned from {c.parent}" if c.parent else ""
        return (
            f"**{c.name}** v{c.version} · {c.family} · {n / 1e6:.1f}M parameters · images ≈{side}×{side} px "
            f"({c.spatial_factor}× tokenizer, {c.codebook_size} codes) · weights `{bundle.weights_hash()[:12]}`{parent}"
        )
