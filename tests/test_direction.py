"""engine.direction: which way a two-sided edit goes, read from negations, "too", complaints and particles;
and the reader turning its head's choice accordingly."""

from __future__ import annotations

import pytest

from engine.direction import AXES, AXIS_OF, direction


@pytest.mark.parametrize(("kind", "text"), [
    ("warmer", "make it warmer"),
    ("cooler", "make it cooler"),
    ("cooler", "less warm please"),
    ("warmer", "not so cold"),
    ("cooler", "it looks too orange"),
    ("cooler", "take some yellow out"),
    ("cooler", "reduce the warmth"),
    ("cooler", "add a blueish tint"),
    ("warmer", "make it warmer and less blue"),
    ("cooler", "cool it down a bit"),
    ("cooler", "lower the colour temperature"),
    ("brighter", "it's too dark"),
    ("brighter", "the image is not bright enough"),
    ("brighter", "it is underexposed"),
    ("darker", "turn the brightness down"),
    ("darker", "I want it darker"),
    ("more_contrast", "make the contrast pop"),
    ("more_contrast", "not enough contrast"),
    ("more_contrast", "contrast is too low"),
    ("more_contrast", "it looks flat"),
    ("less_contrast", "turn down the contrast"),
    ("less_contrast", "the contrast is way too strong"),
    ("less_contrast", "make it look washed out"),
    ("more_saturation", "the colours are washed out"),
    ("more_saturation", "not colourful enough"),
    ("less_saturation", "tone down the colours a bit"),
    ("less_saturation", "the colours are too strong"),
])
def test_direction_follows_the_words(kind, text):
    axis = AXIS_OF[kind]
    assert direction(text, axis) == (1 if AXES[axis][0] == kind else -1)


@pytest.mark.parametrize(("axis", "text"), [
    ("contrast", "adjust the contrast"),
    ("temperature", "change the white balance"),
    ("brightness", "flip it horizontally"),
])
def test_no_direction_when_the_words_do_not_say(axis, text):
    assert direction(text, axis) == 0


def test_reader_turns_the_head_the_way_the_words_say(tmp_path):
    """A head that always prefers "warmer" over "cooler" still reads "less warm" as cooler."""
    import numpy as np

    from engine.understanding import Understanding
    from training.understanding import build

    folder = build(tmp_path / "u", per_kind=8, seed=0)
    u = Understanding(folder)
    w, c = u.labels.index("warmer"), u.labels.index("cooler")
    u.b = u.b.copy()
    u.b[w] += 50.0  # the head now puts almost all its mass on "warmer"
    assert u.read("make it warmer please").steps[0].kind == "warmer"
    assert u.read("less warm please").steps[0].kind == "cooler"
    p = u.probs(["less warm please"])[0]
    assert p[c] > 0.9 and np.isclose(p.sum(), 1.0)
