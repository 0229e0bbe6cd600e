"""engine.generate: a batch of edits run to the end, equal to the sampler's tokens parsed and decoded."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.generate import encode_sources, generate
from engine.layout import build_prompt, parse_generation
from engine.sampler import sample_all

INSTR = ["Make the photo grayscale.", "Flip the image horizontally.", "Invert the colours of the photo."]


@pytest.fixture(scope="module")
def grids():
    rng = np.random.RandomState(0)
    return [rng.randint(0, 64, (4, 5)), rng.randint(0, 64, (3, 3)), rng.randint(0, 64, (4, 5))]


def test_generate_equals_sample_parse_decode(tiny_bundle, grids):
    tok = tiny_bundle.tokenizer
    seeds = [7, 8, 9]
    edits = generate(tiny_bundle, grids, INSTR, seeds, think=True, temperature=1.0, top_k=20, max_new_tokens=60)
    assert [e.prompt for e in edits] == [build_prompt(tok, g, s, True) for g, s in zip(grids, INSTR, strict=True)]
    for e, g, seed in zip(edits, grids, seeds, strict=True):
        h, w = g.shape
        alone = sample_all(tiny_bundle, [e.prompt], h, w, [seed], think=True, temperature=1.0, top_k=20,
                           max_new_tokens=60)[0]
        assert e.tokens == alone.tokens and e.error is None
        np.testing.assert_allclose(e.logprobs, alone.logprobs, atol=1e-4)
        reasoning, grid = parse_generation(tok, alone.tokens, expect_hw=(h, w))
        assert e.reasoning == reasoning and np.array_equal(e.grid, grid)
        assert isinstance(e.image, Image.Image)
        assert np.array_equal(np.asarray(e.image), np.asarray(tiny_bundle.vq.decode([grid])[0]))


def test_batches_shapes_and_order(tiny_bundle, grids):
    seen: list[int] = []
    kw = dict(temperature=1.0, top_k=20, decode=False)
    together = generate(tiny_bundle, grids, INSTR, [1, 2, 3], on_batch=seen.append, **kw)
    assert sorted(seen) == [1, 2]  # one batch per grid shape
    seen.clear()
    one_by_one = generate(tiny_bundle, grids, INSTR, [1, 2, 3], batch_size=1, on_batch=seen.append, **kw)
    assert seen == [1, 1, 1]
    assert [e.tokens for e in together] == [e.tokens for e in one_by_one]
    assert [e.grid.shape for e in together] == [(4, 5), (3, 3), (4, 5)] and together[0].image is None
    # an output of another shape than its source (a quarter turn)
    turned = generate(tiny_bundle, [grids[0]], INSTR[:1], [1], target_hw=[(5, 4)], **kw)[0]
    assert turned.grid.shape == (5, 4)
    with pytest.raises(ValueError, match="as many"):
        generate(tiny_bundle, grids, INSTR[:2], [1, 2, 3])


def test_encode_sources_fits_photos_to_the_bundle(tiny_bundle):
    photo = Image.new("RGB", (160, 90), (200, 30, 30))
    (g,) = encode_sources(tiny_bundle, [photo])
    assert g.dtype == np.int64 and g.ndim == 2 and encode_sources(tiny_bundle, []) == []
    from engine.image_io import fit_to_bundle

    assert np.array_equal(g, tiny_bundle.vq.encode([fit_to_bundle(tiny_bundle, photo)])[0])
    f = tiny_bundle.vq.spatial_factor
    assert g.shape != (90 // f, 160 // f)  # resized to the bundle's area, not encoded as given
