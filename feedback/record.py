"""Record one edit request: the source, the instruction, the model and its settings, and every finished
candidate with its exact tokens and log-probs. The studio, the Fine-tune tab's blind A/B and the simulated
raters all store their edits through ``record_edit``, so the rows training reads look the same whoever
made them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from PIL import Image

from engine.events import Done
from feedback.store import NewCandidate, Store


def bundle_id(bundle: Any) -> str:
    """The name a bundle's candidates are stored under: ``<name>@<version>`` from its config."""
    return f"{bundle.config.name}@{bundle.config.version}"


def record_edit(
    store: Store,
    bundle: Any,
    source: Image.Image,
    instruction: str,
    finished: Iterable[Done],
    settings: dict[str, Any],
    *,
    parent_id: int | None = None,
    rater: str | None = None,
    edit_uid: str | None = None,
    extra_timings: dict[str, float] | None = None,
    original: Image.Image | str | None = None,
) -> list[int]:
    """Store the finished candidates of one edit of ``source`` by ``bundle``; returns their ids in the
    order given.

    ``source`` is the image the model saw; ``original`` the photo at its own size (EXIF applied) that
    ``source`` was fitted from, PIL or a stored image's hash (None: the source itself); each candidate's
    full-resolution result (``Done.full``) and its render provenance are stored next to its output. ``settings`` the sampling settings (it must hold ``think``,
    ``temperature``, ``top_k`` and ``top_p``; everything in it is kept). ``extra_timings`` are added to
    every candidate's engine timings (e.g. what the caller measured around the engine)."""
    extra = dict(extra_timings or {})
    candidates = [
        NewCandidate(
            image=d.image, tokens=list(d.tokens), logprobs=list(d.logprobs), seed=d.seed, idx=d.candidate,
            reasoning=d.reasoning, grid_shape=tuple(d.grid.shape),
            timings={**{k: float(v) for k, v in d.timings.items()}, **extra},
            full=d.full, render=dict(d.render),
        )
        for d in finished
    ]
    return store.add_candidates(
        source=source, instruction=instruction, bundle_id=bundle_id(bundle), weights_hash=bundle.weights_hash(),
        settings=settings, candidates=candidates, parent_id=parent_id, rater=rater, edit_uid=edit_uid,
        original=original,
    )
