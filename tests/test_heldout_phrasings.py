"""The held-out phrasing set: its size and coverage, that training can never draw one of its texts, and that
every suite sample gets a phrasing with its own parameters."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from training import heldout_phrasings as H
from training import rich_language as R
from training.data import suite
from training.data.edits import KINDS
from training.data.edits import language as L

HELD = H.texts()


def test_set_is_large_and_covers_every_kind():
    rows = H.load()
    assert len(rows) >= 300
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({H.normalise(r["text"]) for r in rows}) == len(rows), "duplicate texts"
    count = Counter(r["kind"] for r in rows)
    assert set(count) == set(KINDS)
    assert all(n >= 8 for n in count.values()), count
    # both quarter-turn directions and every zoom corner have their own phrasings
    assert {r["params"]["dir"] for r in rows if r["kind"] == "rotate90"} == {"clockwise", "counterclockwise"}
    assert {r["params"]["where"] for r in rows if r["kind"] == "zoom"} == {"center", "top left", "top right",
                                                                              "bottom left", "bottom right"}
    # every kind a composition can use has clauses for it
    for fam in ("grayscale", "sepia", "invert", "brighter", "darker", "more_contrast", "less_contrast",
                "more_saturation", "less_saturation", "warmer", "cooler", "hflip", "vflip", "rotate180",
                "add_shape", "add_stamp"):
        assert H.pool(fam, {}, clause=True), fam
    assert {"typo", "polite", "terse", "word-order", "question"} <= {t for r in rows for t in r["tags"]}


def test_no_training_template_is_a_heldout_text():
    train = set()
    for t in L.T.values():
        train |= {H.normalise(x) for x in t["imp"] + t["desc"]}
    for n in (2, 3):
        train |= {H.normalise(x) for x in L.COMPOSE_JOIN[n]}
    assert not HELD & train, sorted(HELD & train)


def test_rich_generator_never_draws_a_heldout_text():
    rng = np.random.default_rng(0)
    photo = Image.new("RGB", (128, 96), (90, 120, 150))
    drawn = set()
    for kind in KINDS:
        for _ in range(40 if kind == "compose" else 8):
            params = KINDS[kind].sample(photo, rng)
            for _ in range(4 if kind == "compose" else 25):
                drawn.add(H.normalise(R.instruction(kind, params, rng)))
                if kind != "compose":
                    drawn.add(H.normalise(R.clause(kind, KINDS[kind].fields(params), rng)))
    assert len(drawn) > 5000  # the generator is varied
    assert not drawn & HELD, sorted(drawn & HELD)[:5]


def test_rich_generator_rejects_a_heldout_text(monkeypatch):
    # force the generator onto a held-out sentence (no noise, no wrapper): it must give up, not return it
    monkeypatch.setitem(R.CORES, "grayscale", ["remove the colour"])
    monkeypatch.setattr(R, "WRAP", ["{c}"])
    monkeypatch.setattr(R, "_noise", lambda text, rng, protect=(): text)
    with pytest.raises(RuntimeError):
        R.phrase("grayscale", {}, np.random.default_rng(1))
    with pytest.raises(RuntimeError):
        R.clause("grayscale", {}, np.random.default_rng(1))
    monkeypatch.setitem(R.CORES, "grayscale", ["remove the colour", "make it black and white"])
    assert H.normalise(R.phrase("grayscale", {}, np.random.default_rng(1))) == "make it black and white"


def test_every_sample_gets_a_phrasing_with_its_parameters():
    photos = suite.split_photos("test", None)
    for kind in KINDS:
        for j in range(3):
            s = suite.make_sample(kind, photos, np.random.default_rng([9, j, len(kind)]), f"test-{kind}-{j:03d}")
            text = H.instruction(s)
            assert text and "{" not in text, (kind, text)
            assert text == H.instruction(dict(s)), "depends on the id alone"
            if kind == "rotate90":
                left = any(w in text.lower() for w in ("left", "counter", "anti", "ccw"))
                assert left == (s["params"]["dir"] == "counterclockwise"), text
            if kind in ("remove", "recolour", "move", "resize", "replace"):
                assert KINDS[kind].fields(s["params"])["obj"] in text.lower()
    # consecutive samples of a kind get different phrasings
    texts = {H.phrase("sepia", {}, i) for i in range(10)}
    assert len(texts) == 10
