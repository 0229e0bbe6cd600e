"""Streaming events produced by ``engine.edit`` and consumed by the studio and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image


@dataclass
class Text:
    """A piece of reasoning text generated for one candidate."""

    candidate: int
    delta: str


@dataclass
class ImageRow:
    """One finished row of visual codes for one candidate."""

    candidate: int
    row: int
    codes: list[int]


@dataclass
class Preview:
    """A decoded partial image: rows not yet generated are filled in (not black)."""

    candidate: int
    image: Image.Image
    rows_done: int


@dataclass
class Done:
    """A finished candidate: ``image`` is the model's own output (model resolution); ``full`` the same
    edit rendered at the photo's resolution (``engine.render``; None when not asked for or when the
    render failed) and ``render`` its provenance (transform, colour fit, changed area, method)."""

    candidate: int
    image: Image.Image
    grid: np.ndarray  # (H, W) int codes
    tokens: list[int]  # every generated token id (after the prompt), forced ones included
    logprobs: list[float]  # per generated token, same length as ``tokens``
    reasoning: str
    seed: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds: first_preview, total, ...
    full: Image.Image | None = None
    render: dict = field(default_factory=dict)


@dataclass
class Understood:
    """How the instruction was read (``engine.understanding``), before any candidate: what the model is told
    (``canonical``; None: the text as typed), a line for the person, and a warning when the request falls
    outside what the model was trained for. Only for bundles that bring an ``understanding/`` folder."""

    summary: str
    canonical: str | None
    warning: str | None
    reading: dict = field(default_factory=dict)  # Reading.as_dict()


@dataclass
class Error:
    """Something went wrong; ``candidate`` is None when the whole request failed."""

    message: str
    candidate: int | None = None


Event = Text | ImageRow | Preview | Done | Error | Understood
