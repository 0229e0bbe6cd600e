"""engine.edit: event order and content, errors, seeds, cancellation (tiny random bundle)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from engine import edit, edit_blocking
from engine.events import Done, Error, ImageRow, Preview, Text


@pytest.fixture(scope="module")
def photo():
    y, x = np.mgrid[0:96, 0:96]
    arr = np.stack([x * 2.6, y * 2.6, (x + y) * 1.3], -1).astype(np.uint8)
    return Image.fromarray(arr)


def test_edit_streams_in_order(tiny_bundle, photo):
    events = list(edit(tiny_bundle, photo, "Make the photo grayscale.", n=2, think=True, seed=3,
                       max_new_tokens=120, preview_every=3))
    assert not [e for e in events if isinstance(e, Error)]
    h = w = 8
    for c in range(2):
        mine = [e for e in events if getattr(e, "candidate", None) == c]
        kinds = [type(e).__name__ for e in mine]
        assert kinds[-1] == "Done" and kinds.count("Done") == 1
        # reasoning text first, then rows (with previews in between), then Done
        first_row = kinds.index("ImageRow")
        assert "Text" in kinds[:first_row] and "Text" not in kinds[first_row:]
        rows = [e for e in mine if isinstance(e, ImageRow)]
        assert [r.row for r in rows] == list(range(h)) and all(len(r.codes) == w for r in rows)
        previews = [e for e in mine if isinstance(e, Preview)]
        assert [p.rows_done for p in previews] == [1, 3, 6]  # the first row at once, then every 3
        assert all(p.image.size == (64, 64) for p in previews)
        done: Done = mine[-1]
        assert done.seed == 3 + c and done.image.size == (64, 64) and done.grid.shape == (h, w)
        np.testing.assert_array_equal(done.grid, np.array([r.codes for r in rows]))
        assert len(done.tokens) == len(done.logprobs) and all(lp <= 0 for lp in done.logprobs)
        assert done.reasoning == "".join(e.delta for e in mine if isinstance(e, Text))
        t = done.timings
        assert 0 < t["prepare"] <= t["first_token"] <= t["first_preview"] <= t["total"]


def test_preview_fills_missing_rows_with_the_source(tiny_bundle, photo):
    wide = photo.crop((0, 0, 96, 60))  # not square: a 10*6 grid
    events = list(edit(tiny_bundle, wide, "Flip the image horizontally.", n=1, seed=0, preview_every=4))
    preview = next(e for e in events if isinstance(e, Preview) and e.rows_done == 4)
    from engine.image_io import prepare_image

    src_grid = tiny_bundle.vq.encode([prepare_image(wide, 64 * 64, 8)])[0]
    done = next(e for e in events if isinstance(e, Done))
    assert done.grid.shape == src_grid.shape == (6, 10) and done.image.size == (80, 48)
    expected = src_grid.copy()
    expected[:4] = done.grid[:4]
    np.testing.assert_array_equal(np.asarray(preview.image), np.asarray(tiny_bundle.vq.decode([expected])[0]))


def test_seeds_reproduce_and_offset(tiny_bundle, photo):
    a = edit_blocking(tiny_bundle, photo, "Invert the colours.", n=2, seed=10, top_k=16)
    b = edit_blocking(tiny_bundle, photo, "Invert the colours.", n=1, seed=11, top_k=16)
    assert [d.candidate for d in a] == [0, 1]
    assert a[1].tokens == b[0].tokens and a[1].seed == b[0].seed == 11
    assert a[0].tokens != a[1].tokens
    c = edit_blocking(tiny_bundle, photo, "Invert the colours.", n=1, cfg_text=2.0, cfg_image=1.5, seed=4)
    assert c[0].grid.shape == (8, 8)


@pytest.mark.parametrize("instruction", ["", "   ", None])
def test_empty_instruction_is_a_polite_error(tiny_bundle, photo, instruction):
    events = list(edit(tiny_bundle, photo, instruction))
    assert len(events) == 1 and isinstance(events[0], Error) and "Please" in events[0].message
    with pytest.raises(ValueError, match="instruction"):
        edit_blocking(tiny_bundle, photo, instruction)


def test_bad_inputs_are_errors(tiny_bundle, photo):
    (err,) = list(edit(tiny_bundle, b"this is not an image", "Make it grayscale."))
    assert isinstance(err, Error) and "image" in err.message.lower()
    (err,) = list(edit(tiny_bundle, photo, "Make it grayscale.", n=0))
    assert isinstance(err, Error) and "candidates" in err.message
    (err,) = list(edit(tiny_bundle, photo, "Make it grayscale.", top_p=0))
    assert isinstance(err, Error) and "top-p" in err.message


def test_an_instruction_past_the_models_positions_is_refused(tiny_bundle, photo):
    limit = tiny_bundle.lm.config.max_position_embeddings
    long = "make the photo black and white, " * (limit // 4)
    (err,) = list(edit(tiny_bundle, photo, long, n=1))
    assert isinstance(err, Error) and "too long" in err.message and str(limit) in err.message
    # a long instruction well inside the limit still edits
    mid = "make it grey " * 80
    assert isinstance(list(edit(tiny_bundle, photo, mid, n=1, seed=0))[-1], Done)


def test_cancel_stops_the_stream(tiny_bundle, photo):
    cancel = threading.Event()
    seen = []
    for ev in edit(tiny_bundle, photo, "Make it grayscale.", n=2, seed=1, cancel=cancel):
        seen.append(ev)
        if isinstance(ev, ImageRow) and ev.row == 1:
            cancel.set()
    assert not any(isinstance(e, Done) for e in seen)
    assert max(e.row for e in seen if isinstance(e, ImageRow)) <= 2
