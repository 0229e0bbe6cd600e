"""The photo the user uploads: a readable message (and one log line) for a file that is not an image, and
the model's input made from it, linked to the result it came from when it is one."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from studio.context import StudioContext

log = logging.getLogger("studio.uploads")
UNREADABLE = "That file could not be read as an image ({}). Use a PNG, JPEG or WebP photo."


def rejected(message: str) -> None:
    """Log an upload the studio turned away, in one line (the UI shows the same message)."""
    log.warning("upload rejected: %s", message)


def _friendly_image_errors() -> None:
    """Make every gr.Image input turn an unreadable upload into a readable UI error, not a traceback.

    Patched on the class, once: Gradio rebuilds a component for a session from its constructor
    arguments whenever a handler updates it (``blocks.postprocess_data``), so a per-instance patch is
    lost after the first such update (an example picked, a result continued from) and an unreadable
    upload would then show Gradio's raw "Could not preprocess input component" error. Subclassing is the
    other way, but Gradio writes a .pyi stub next to any module that subclasses a component."""
    if getattr(gr.Image.preprocess, "_friendly", False):
        return
    inner = gr.Image.preprocess

    def preprocess(self: gr.Image, payload: Any) -> Any:
        try:
            return inner(self, payload)
        except gr.Error:
            raise
        except Exception as e:
            message = UNREADABLE.format(type(e).__name__)
            rejected(f"{message} ({e})")
            # handled: the log line above says what happened, Gradio need not print a traceback
            raise gr.Error(message, print_exception=False) from e

    preprocess._friendly = True  # type: ignore[attr-defined]
    gr.Image.preprocess = preprocess  # type: ignore[method-assign]


def photo_input(**kwargs: Any) -> gr.Image:
    """gr.Image for the photo to edit: unreadable uploads get a readable UI error (``_friendly_image_errors``)."""
    _friendly_image_errors()
    return gr.Image(**kwargs)


def source_image(ctx: StudioContext, photo_path: str, parent: int | None, bundle: Any) -> tuple[Image.Image, int | None]:
    """The model's input and its parent candidate. If the photo is the output of the candidate the
    user continued from (pixel-identical), that stored image is used as is and linked as parent.

    Raises ``ValueError`` (``ImageInputError``) with a user-facing message for a file it cannot use."""
    from engine.image_io import load_image, prepare_image

    if parent is not None:
        c = ctx.store.candidate(int(parent))
        prev = ctx.store.load_image(c.output_hash)
        shown = load_image(photo_path, max_bytes=ctx.max_upload_bytes)
        if shown.size == prev.size and np.array_equal(np.asarray(shown), np.asarray(prev)):
            return prev, c.id
    cfg = bundle.config
    return prepare_image(photo_path, cfg.image_area, cfg.spatial_factor, max_bytes=ctx.max_upload_bytes), None
