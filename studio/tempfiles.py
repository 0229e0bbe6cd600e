"""The studio's temp files under one cap: what a long-running studio writes besides the feedback store.

Three folders hold them: Gradio's cache (the photos people upload), ``<data>/previews`` (streamed
previews, heatmaps, screen-sized copies of large images) and ``<data>/exports`` (the download files:
hard links to the stored images, copies where the file system has no links).

Gradio copies every file a component shows into its cache unless the file lies under a static path, so
each full-size download and each screen-sized preview would exist twice, the second copy bounded only by
``delete_cache``'s age. ``serve_in_place`` makes the studio's own folders static: the page is served
from them and Gradio's cache keeps only what people upload. ``TempFiles.prune`` then drops the least
recently used files of the three folders until they fit ``TEMP_CAP_BYTES`` (``--temp-cap-mb``).

What a page still shows stays: its files are the most recently used (a file handed out again is touched,
``touch``) and the photo of the edit being started is never dropped. A page left open while others make
many edits can lose its files; the studio remakes previews and downloads from the store when they are
asked for again, and a photo whose upload was dropped is asked for again (``studio.uploads``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gradio as gr

TEMP_CAP_BYTES = 1024 * 1024 * 1024  # Gradio's cache + previews + exports, after each prune
TEMP_MAX_FILES = 10_000  # and at most this many files in them (a listing stays quick)


def touch(path: str | Path) -> None:
    """Mark a file as just used (its modification time), so the prune counts it among the newest."""
    try:
        os.utime(path)
    except OSError:
        pass


def serve_in_place(folders: Iterable[Path]) -> None:
    """Let Gradio serve the files under ``folders`` from where they are instead of copying each one it
    shows into its cache (Gradio's static paths: process-wide, only ever added to)."""
    import gradio as gr

    gr.set_static_paths([Path(f) for f in folders])


def freed_by_removing(st: os.stat_result) -> int:
    """Bytes that deleting a file gives back: nothing for a hard link whose data another name keeps
    (a download linked to a stored image)."""
    return st.st_size if st.st_nlink <= 1 else 0


@dataclass
class TempFile:
    """One temp file as the prune weighs it."""

    path: str
    used: float  # modification time: written or last handed out
    size: int  # bytes that removing it frees
    gradio_sets: list[set[str]] = field(default_factory=list)  # Gradio's sets that list it (its cache)


class TempFiles:
    """The studio's temp folders and the Gradio cache files of one Blocks, pruned together."""

    def __init__(self, folders: Iterable[Path], max_bytes: int = TEMP_CAP_BYTES,
                 max_files: int = TEMP_MAX_FILES) -> None:
        self.folders = list(folders)
        self.max_bytes, self.max_files = max_bytes, max_files
        self.blocks: Any = None  # gr.Blocks whose uploads count too (``track``)
        self._lock = threading.Lock()

    def track(self, blocks: gr.Blocks) -> None:
        """Count the files ``blocks`` puts into Gradio's cache (uploads, images it saved) with ours."""
        self.blocks = blocks

    def files(self) -> list[TempFile]:
        """Every temp file, once each."""
        found: dict[str, TempFile] = {}
        for f in [*self._in_folders(), *self._in_gradio_cache()]:
            if f.path in found:
                found[f.path].gradio_sets += f.gradio_sets
            else:
                found[f.path] = f
        return list(found.values())

    def total_bytes(self) -> int:
        return sum(f.size for f in self.files())

    def _in_folders(self) -> Iterator[TempFile]:
        for folder in self.folders:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for e in entries:
                try:
                    if e.is_file(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        yield TempFile(os.path.abspath(e.path), st.st_mtime, freed_by_removing(st))
                except OSError:
                    continue

    def _in_gradio_cache(self) -> Iterator[TempFile]:
        """Files this app put into Gradio's cache, except those Gradio keeps for good (the examples)."""
        if self.blocks is None:
            return
        kept: set[str] = set()
        for block in list(self.blocks.blocks.values()):
            kept.update(getattr(block, "keep_in_cache", ()))
        for tracked in list(self.blocks.temp_file_sets):
            for name in list(tracked):
                if name in kept:
                    continue
                try:
                    st = os.lstat(name)
                except OSError:
                    continue
                yield TempFile(os.path.abspath(name), st.st_mtime, freed_by_removing(st), [tracked])

    def prune(self, keep: Iterable[str | Path | None] = ()) -> int:
        """Drop the least recently used files until at most ``max_files`` of at most ``max_bytes`` are
        left, never one named in ``keep`` (the photo being edited). Returns the bytes freed."""
        spare = {os.path.abspath(k) for k in keep if k}
        with self._lock:
            files = sorted(self.files(), key=lambda f: f.used)
            total, count, freed = sum(f.size for f in files), len(files), 0
            for f in files:
                if count <= self.max_files and total <= self.max_bytes:
                    break
                if f.path in spare:
                    continue
                _remove(f)
                total, count, freed = total - f.size, count - 1, freed + f.size
            return freed


def _remove(f: TempFile) -> None:
    """Delete a temp file; for one in Gradio's cache, also its entry in Gradio's sets and its folder
    (Gradio gives each cached file a folder of its own, named by its hash)."""
    try:
        os.remove(f.path)
    except OSError:
        return
    for tracked in f.gradio_sets:
        tracked.discard(f.path)
    if f.gradio_sets:
        try:
            os.rmdir(os.path.dirname(f.path))
        except OSError:
            pass
