"""The photo the user uploads: a readable message (and one log line) for a file that is not an image, and
the edit's source made from it (the photo at its own size and the model's input), linked to the result it
came from when it is one."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from studio.context import StudioContext

log = logging.getLogger("studio.uploads")
UNREADABLE = "That file could not be read as an image. Use a PNG, JPEG or WebP photo."
GONE = ("The photo is no longer on the server: its temp files were cleared to keep within the disk cap "
        "(--temp-cap-mb). Upload it again.")


def rejected(message: str) -> None:
    """Log an upload the studio turned away, in one line (the UI shows the same message)."""
    log.warning("upload rejected: %s", message)


def _friendly_image_errors() -> None:
    """Make every gr.Image input turn an unreadable (or no longer kept) upload into a readable UI error,
    not a traceback.

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
        except FileNotFoundError as e:  # an upload dropped by the temp-file prune (studio.tempfiles)
            rejected(f"{GONE} ({e})")
            raise gr.Error(GONE, print_exception=False) from e
        except Exception as e:
            rejected(f"{UNREADABLE} ({type(e).__name__}: {e})")
            # handled: the log line above says what happened, Gradio need not print a traceback
            raise gr.Error(UNREADABLE, print_exception=False) from e

    preprocess._friendly = True  # type: ignore[attr-defined]
    gr.Image.preprocess = preprocess  # type: ignore[method-assign]


def photo_input(**kwargs: Any) -> gr.Image:
    """gr.Image for the photo to edit: unreadable uploads get a readable UI error (``_friendly_image_errors``)."""
    _friendly_image_errors()
    return gr.Image(**kwargs)


@dataclass
class Source:
    """What an edit starts from: the photo at its own size (EXIF applied), the model's input fitted from
    it, the stored image it is (when it is one) and the candidate whose result it is (when it is one)."""

    original: Image.Image
    model_input: Image.Image
    original_hash: str | None = None
    parent: int | None = None


def source_image(ctx: StudioContext, photo_path: str, st: dict, bundle: Any) -> Source:
    """The edit's source for the photo box's file. The box shows a screen-sized preview of a stored image
    after "Continue editing" or a history click (``st["photo"]``, and ``st["parent"]`` for a result):
    when the box still holds exactly that preview, the edit starts from the stored image at its full
    size and is linked to its parent; any other photo is a new one.

    Raises ``ValueError`` (``ImageInputError``) with a user-facing message for a file it cannot use."""
    from engine.image_io import fit_to_bundle, load_image

    shown = load_image(photo_path, max_bytes=ctx.max_upload_bytes)
    original, original_hash, parent = shown, None, None
    key = st.get("photo")
    if key and ctx.store.image_problem(key) is None:
        with Image.open(ctx.previews.screen_size(ctx.store.image_path(key), key)) as im:  # our own PNG
            preview = im.convert("RGB")
        if shown.size == preview.size and np.array_equal(np.asarray(shown), np.asarray(preview)):
            original_hash = key
            original = ctx.store.load_image(key) if preview.size != _stored_size(ctx, key) else preview
            parent = st.get("parent")
    return Source(original, fit_to_bundle(bundle, original), original_hash, parent)


def _stored_size(ctx: StudioContext, image_hash: str) -> tuple[int, int]:
    with Image.open(ctx.store.image_path(image_hash)) as im:
        return im.size
