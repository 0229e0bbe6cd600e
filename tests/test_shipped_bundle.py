"""Smoke test of the shipped EARL-nano bundle: it loads and edits a real photo end to end on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from engine import edit_blocking
from engine.bundle import default_bundle_path, load_bundle
from engine.image_io import fit_to_bundle, load_image, prepare_image
from engine.layout import parse_generation

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
# EARL_SHIPPED_BUNDLE points the test at another bundle folder (e.g. a freshly exported one).
BUNDLE = Path(os.environ.get("EARL_SHIPPED_BUNDLE", default_bundle_path()))


@pytest.fixture(scope="module")
def nano():
    assert (BUNDLE / "bundle.json").exists(), f"the shipped bundle is missing at {BUNDLE}"
    return load_bundle(BUNDLE)


def test_shipped_bundle_is_earl_nano(nano):
    assert nano.config.family == "earl-nano"
    assert nano.config.image_area == 128 * 128 and nano.config.spatial_factor == 8
    n_params = sum(p.numel() for p in nano.lm.parameters())
    assert 2_000_000 < n_params < 40_000_000
    size = sum(f.stat().st_size for f in BUNDLE.rglob("*") if f.is_file())
    assert size < 100 * 2**20, f"shipped bundle is {size / 2**20:.0f} MiB"


@pytest.mark.parametrize("think", [False, True])
def test_edits_a_real_photo_deterministically(nano, think):
    photo = EXAMPLES / "coffee.jpg"
    first = edit_blocking(nano, photo, "Make the photo black and white.", n=2, seed=11, think=think,
                          max_new_tokens=400)
    again = edit_blocking(nano, photo, "Make the photo black and white.", n=1, seed=12, think=think,
                          max_new_tokens=400)
    src = prepare_image(photo, nano.config.image_area, nano.config.spatial_factor)
    h, w = src.height // 8, src.width // 8
    for done in first:
        assert done.grid.shape == (h, w)  # the grid is complete: exactly H rows of W codes
        assert done.image.size == src.size and done.image.mode == "RGB"
        reasoning, grid = parse_generation(nano.tokenizer, done.tokens, expect_hw=(h, w))
        np.testing.assert_array_equal(grid, done.grid)
        assert bool(reasoning.strip()) == think  # the model learned to reason in think mode only
        assert np.asarray(done.image).std() > 1.0  # decoded to a picture, not a flat fill
    # same seed => same edit, in a batch of two or alone (candidate 1 of the batch used seed 12)
    np.testing.assert_array_equal(first[1].grid, again[0].grid)
    assert first[1].tokens == again[0].tokens


def test_speculative_decoding_gives_the_same_edit_in_fewer_passes(nano, forward_passes):
    """An object edit copies most of the photo: guessed copies are kept, the tokens stay the same."""
    passes = forward_passes
    photo = EXAMPLES / "coffee.jpg"
    kw = dict(n=1, seed=3, temperature=0.7)
    plain = edit_blocking(nano, photo, "Add a red circle in the top left corner.", speculate=0, **kw)[0]
    n_plain, passes[:] = len(passes), []
    fast = edit_blocking(nano, photo, "Add a red circle in the top left corner.", **kw)[0]
    assert fast.tokens == plain.tokens
    np.testing.assert_array_equal(fast.grid, plain.grid)
    assert len(passes) < 0.6 * n_plain, (len(passes), n_plain)


def test_a_quarter_turn_of_a_landscape_photo_comes_out_portrait(nano):
    """The shipped model chooses the turned header for a quarter turn, so a landscape photo comes back
    portrait, at full resolution too; a flip of the same photo keeps its shape."""
    photo = EXAMPLES / "rocket.jpg"
    src = fit_to_bundle(nano, load_image(photo))
    h, w = src.height // 8, src.width // 8
    assert w > h and nano.config.transpose
    turned = edit_blocking(nano, photo, "Rotate the image 90 degrees clockwise.", n=2, seed=0,
                           full_resolution=True)
    for done in turned:
        assert done.grid.shape == (w, h) and done.image.size == (src.height, src.width)
        assert done.full.height > done.full.width
    (flipped,) = edit_blocking(nano, photo, "Flip the image horizontally.", n=1, seed=0)
    assert flipped.grid.shape == (h, w)


def test_a_photo_of_a_shape_it_never_saw_is_flipped_and_turned(nano):
    """A near-square portrait (6:7) makes a grid shape the suite never trains; the engine shows the model
    the photo cropped to its nearest trained shape, and the flips and the half turn come out right."""
    from PIL import Image

    with Image.open(EXAMPLES / "chelsea.jpg") as im:
        w, h = im.size
        photo = im.convert("RGB").crop(((w - 6 * h // 7) // 2, 0, (w - 6 * h // 7) // 2 + 6 * h // 7, h))
    for text, want in [("Flip it horizontally.", "hflip"), ("Flip it vertically.", "vflip"),
                       ("Rotate it 180 degrees.", "rotate180")]:
        (done,) = edit_blocking(nano, photo, text, n=1, seed=0)
        assert done.render["transform"]["name"] == want and done.full.size == photo.size, (text, done.render)
