"""Run one edit request: stream engine events into UI-friendly snapshots, then record the result.

Gradio-free so it can be tested and reused (CLI, simulated raters). The studio turns each
``Snapshot`` into component updates."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from engine.bundle import transpose_default
from engine.events import Done, Error, Preview, Text, Understood
from engine.sampler import SAMPLING_DEFAULTS, fp16_default
from feedback.record import record_edit
from feedback.store import Store

EditFn = Callable[..., Iterator[Any]]


@dataclass
class EditRequest:
    source: Image.Image  # already prepared for the bundle (area, multiples of the tokenizer factor)
    instruction: str
    n: int = 4
    think: bool = False
    seed: int = 0  # candidate i uses seed + i
    temperature: float = SAMPLING_DEFAULTS["temperature"]
    top_k: int = int(SAMPLING_DEFAULTS["top_k"])
    top_p: float = SAMPLING_DEFAULTS["top_p"]
    cfg_text: float = 1.0
    cfg_image: float = 1.0
    preview_every: int = 2
    parent_id: int | None = None  # the source is this earlier result (history tree)
    # The photo at its own size (EXIF applied) that ``source`` was fitted from: the engine renders each
    # result at its resolution. None: the source itself. ``original_hash``: it is this stored image.
    original: Image.Image | None = None
    original_hash: str | None = None

    def settings(self, bundle: Any) -> dict[str, Any]:
        return {
            "n": self.n, "think": self.think, "seed": self.seed, "temperature": self.temperature,
            "top_k": self.top_k, "top_p": self.top_p, "cfg_text": self.cfg_text, "cfg_image": self.cfg_image,
            "preview_every": self.preview_every, "image_area": bundle.config.image_area,
            "fp16": fp16_default(bundle),  # engine.edit's decoding weights (its default, which the studio uses)
            "transpose": transpose_default(bundle),  # whether a candidate may come out turned on its side
        }


@dataclass
class Snapshot:
    images: list[Image.Image | None]  # latest preview or final image per candidate
    rows_done: list[int]
    done: list[bool]
    reasoning: list[str]
    seeds: list[int]
    elapsed_s: float
    first_preview_s: float | None = None
    finished: bool = False
    cancelled: bool = False
    errors: list[str] = field(default_factory=list)
    understood: str = ""  # "Understood: make it black and white" (bundles that read instructions)
    notice: str = ""  # why the request may fall outside what the model does
    candidate_ids: list[int | None] = field(default_factory=list)  # set once recorded
    edit_uid: str = ""
    total_rows: int = 0  # the source's rows
    rows_total: list[int] = field(default_factory=list)  # each candidate's: its source's, or W once turned (W×H)


def stream_edit(
    bundle: Any,
    store: Store,
    req: EditRequest,
    *,
    edit_fn: EditFn,
    cancel: threading.Event | None = None,
    rater: str | None = None,
    min_interval_s: float = 0.12,
) -> Iterator[Snapshot]:
    """Yield snapshots while ``edit_fn`` streams (at most one per ``min_interval_s``, plus the
    first preview and the end), then record finished candidates in ``store`` and yield the final one.

    Cancelled requests keep the candidates that had finished; unfinished ones are dropped."""
    n = req.n
    t0 = time.perf_counter()
    total_rows = req.source.size[1] // bundle.config.spatial_factor
    snap = Snapshot(
        images=[None] * n, rows_done=[0] * n, done=[False] * n, reasoning=[""] * n,
        seeds=[req.seed + i for i in range(n)], elapsed_s=0.0, edit_uid=uuid.uuid4().hex,
        total_rows=total_rows, candidate_ids=[None] * n, rows_total=[total_rows] * n,
    )
    finished: dict[int, Done] = {}
    last_yield = 0.0
    # given the original, the engine fits it to the model's picture itself (the same ``fit_to_area`` that
    # made ``req.source``) and renders every result at the original's size
    events = edit_fn(
        bundle, req.original if req.original is not None else req.source, req.instruction, n=n, think=req.think, seed=req.seed,
        temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, cfg_text=req.cfg_text,
        cfg_image=req.cfg_image, preview_every=req.preview_every, cancel=cancel,
    )
    given = req.instruction  # what the model is told: the bundle's reading of the words, when it has one
    try:
        for ev in events:
            now = time.perf_counter() - t0
            snap.elapsed_s = now
            force = False
            if isinstance(ev, Text):
                snap.reasoning[ev.candidate] += ev.delta
            elif isinstance(ev, Preview):
                snap.images[ev.candidate] = ev.image
                snap.rows_done[ev.candidate] = ev.rows_done
                snap.rows_total[ev.candidate] = ev.image.height // bundle.config.spatial_factor
                if snap.first_preview_s is None:
                    snap.first_preview_s = now
                    force = True
            elif isinstance(ev, Done):
                finished[ev.candidate] = ev
                snap.images[ev.candidate] = ev.image
                snap.done[ev.candidate] = True
                snap.rows_done[ev.candidate] = snap.rows_total[ev.candidate] = int(ev.grid.shape[0])
                snap.reasoning[ev.candidate] = ev.reasoning
                snap.seeds[ev.candidate] = ev.seed
                if snap.first_preview_s is None:
                    snap.first_preview_s = now
                force = True
            elif isinstance(ev, Understood):
                snap.understood, snap.notice = ev.summary, ev.warning or ""
                given = ev.canonical or given
                force = True
            elif isinstance(ev, Error):
                who = "request" if ev.candidate is None else f"candidate {ev.candidate + 1}"
                snap.errors.append(f"{who}: {ev.message}")
                force = True
            if force or now - last_yield >= min_interval_s:
                last_yield = now
                yield snap
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # stops the engine's generator (and its thread, if any) on early exit
    snap.elapsed_s = time.perf_counter() - t0
    snap.cancelled = bool(cancel is not None and cancel.is_set() and len(finished) < n)
    if finished:
        order = sorted(finished)
        # stored as the model was told it, so training on these ratings scores the tokens under the prompt
        # that made them; the words the person typed stay in the settings
        settings = req.settings(bundle)
        if given != req.instruction:
            settings["typed_instruction"] = req.instruction
        ids = record_edit(
            store, bundle, req.source, given, [finished[i] for i in order], settings,
            parent_id=req.parent_id, rater=rater, edit_uid=snap.edit_uid,
            original=req.original_hash or req.original,
            extra_timings={"studio_first_preview": snap.first_preview_s or 0.0, "studio_total": snap.elapsed_s},
        )
        for i, cid in zip(order, ids, strict=True):
            snap.candidate_ids[i] = cid
    snap.finished = True
    yield snap
