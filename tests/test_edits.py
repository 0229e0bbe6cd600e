"""Edit programs, phrasings, the sample stream and the fixed sets (scikit-image photos; no corpus)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from training.data import suite
from training.data.edits import KINDS, ops
from training.data.edits import language as L
from training.data.edits import objects as O

PHOTOS = suite.split_photos("test", root=None)


def _sample(kind: str, j: int = 0) -> dict:
    return suite.make_sample(kind, PHOTOS, np.random.default_rng([11, j, list(KINDS).index(kind)]), f"t-{kind}")


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_is_exact_and_well_formed(kind):
    s = _sample(kind)
    src, tgt, m = np.asarray(s["source"]), np.asarray(s["target"]), s["mask"]
    # a quarter turn transposes the shape; the mask is in the target's frame
    assert tgt.shape == (src.shape if kind != "rotate90" else (src.shape[1], src.shape[0], 3))
    assert m.shape == tgt.shape[:2] and m.dtype == bool
    assert src.shape[0] % 8 == 0 and src.shape[1] % 8 == 0
    assert m.any()
    # the mask is made of whole token cells
    H, W = m.shape
    cells = m.reshape(H // 8, 8, W // 8, 8)
    assert (cells.all(axis=(1, 3)) == cells.any(axis=(1, 3))).all()
    # outside the region nothing changes
    if src.shape == tgt.shape:
        assert (src[~m] == tgt[~m]).all()
        assert (src != tgt).any()
    # the same params render the same target again (exact ground truth)
    again = KINDS[kind].render(s["crop"], s["params"])
    assert again.target.tobytes() == s["target"].tobytes()
    assert s["instruction"] and s["instruction_heldout"] and s["instruction"] != s["instruction_heldout"]
    assert "box [" in s["reasoning"] and len(s["reasoning"].split()) <= 45
    assert list(s["grid"]) == [src.shape[1] // 8, src.shape[0] // 8]


def test_heldout_phrasings_never_used_in_training():
    for kind, t in L.T.items():
        assert not set(t["held"]) & set(t["imp"] + t["desc"]), kind
    for n in (2, 3):
        assert not set(L.COMPOSE_JOIN_HELD[n]) & set(L.COMPOSE_JOIN[n])
    # a training sample never shows a held-out phrasing
    held = {t.split("{")[0] for t in L.T["grayscale"]["held"]}
    for _, s in zip(range(30), suite.stream("train", seed=1, root=None, kinds=["grayscale"]), strict=False):
        assert not any(s["instruction"].lower().startswith(h) for h in held)


def _take(n: int, it) -> list:
    return [s for _, s in zip(range(n), it, strict=False)]


def test_stream_is_deterministic_and_resumable():
    a = _take(4, suite.stream("test", seed=3, root=None))
    b = _take(4, suite.stream("test", seed=3, root=None))
    c = next(suite.stream("test", seed=3, root=None, start=2))
    for x, y in zip(a, b, strict=True):
        assert x["kind"] == y["kind"] and x["instruction"] == y["instruction"]
        assert x["target"].tobytes() == y["target"].tobytes() and (x["mask"] == y["mask"]).all()
    assert c["target"].tobytes() == a[2]["target"].tobytes()
    d = _take(4, suite.stream("test", seed=4, root=None))
    assert any(x["target"].tobytes() != y["target"].tobytes() for x, y in zip(a, d, strict=True))


def test_stream_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown edit kinds"):
        next(suite.stream("test", root=None, kinds=["sharpen"]))


def test_a_quarter_turn_of_a_non_square_photo_has_the_transposed_shape():
    a = np.random.default_rng(0).random((16, 24, 3)).astype(np.float32)
    assert np.array_equal(ops.rotate(a, 90), np.rot90(a, -1)) and ops.rotate(a, 270).shape == (24, 16, 3)
    # samples are drawn from every aspect; a non-square one's target is the turned photo
    shapes = set()
    for j in range(12):
        s = _sample("rotate90", j)
        w, h = s["source"].size
        shapes.add(w == h)
        turned = s["source"].transpose(Image.Transpose.ROTATE_270 if s["params"]["dir"] == "clockwise"
                                       else Image.Transpose.ROTATE_90)
        assert s["target"].tobytes() == turned.tobytes() and s["target"].size == (h, w)
        assert s["mask"].shape == (w, h) and s["mask"].all()
    assert shapes == {True, False}


def test_objects_visible_at_token_scale():
    assert O.load_stamps(), "assets/stamps must ship some stamps"
    for size in O.SIZES:
        assert O.object_size_px(size, 128, 128) >= 2 * 8 + 8
    sp = O.shape_sprite("star", "red", 32)
    assert sp.shape == (32, 32, 4) and sp[..., 3].max() == 255


def test_fixed_sets_roundtrip(tmp_path):
    base = suite.build_sets(tmp_path, root=None, sizes={"val": 1})
    rows = suite.load_set(base, "val")
    assert len(rows) == len(KINDS)
    again = suite.build_sets(tmp_path / "b", root=None, sizes={"val": 1})
    assert (base / "val" / "samples.jsonl").read_text() == (again / "val" / "samples.jsonl").read_text()
    r = rows[0]
    fresh = _sample_from_set(r)
    assert fresh.tobytes() == r["target"].tobytes()
    # building another split keeps the first one's recorded size (else evaluating it builds it again)
    suite.build_sets(tmp_path, root=None, sizes={"test": 1})
    assert json.loads((base / "VERSION.json").read_text())["sizes"] == {"val": 1, "test": 1}


def test_a_larger_set_of_a_few_kinds_starts_with_the_fixed_samples(tmp_path):
    full = suite.load_set(suite.build_sets(tmp_path / "a", root=None, sizes={"val": 1}), "val")
    some = suite.load_set(suite.build_sets(tmp_path / "b", root=None, sizes={"val": 2}, kinds=["vflip", "compose"]),
                          "val")
    assert [r["id"] for r in some] == ["val-vflip-000", "val-vflip-001", "val-compose-000", "val-compose-001"]
    for r in some[::2]:
        same = next(f for f in full if f["id"] == r["id"])
        assert r["instruction"] == same["instruction"] and r["target"].tobytes() == same["target"].tobytes()
    with pytest.raises(ValueError, match="unknown edit kind"):
        suite.build_sets(tmp_path / "c", root=None, sizes={"val": 1}, kinds=["fold"])
    # a few kinds written over the whole suite's folder: the record no longer claims the other split whole
    suite.build_sets(tmp_path / "a", root=None, sizes={"test": 1}, kinds=["vflip"])
    assert json.loads((tmp_path / "a" / "v1" / "VERSION.json").read_text())["sizes"] == {"test": 1}
    # and the evaluation's cache builds the whole suite over such a set instead of taking it for the suite
    from training.eval import load_samples

    rows = load_samples(tmp_path / "none", "test", corpus=None, cache=tmp_path / "a", n_per_kind=1)
    assert len(rows) == len(KINDS)


def _sample_from_set(r: dict) -> Image.Image:
    rng = np.random.default_rng([1234, suite.SPLIT_CODE["val"], list(KINDS).index(r["kind"]), 0])
    return suite.make_sample(r["kind"], suite.split_photos("val", None), rng, "x")["target"]


def test_preview_sheet(tmp_path):
    p = suite.preview(tmp_path / "sheet.png", root=None)
    with Image.open(p) as im:
        assert im.size[1] > 100 * len(KINDS)


def test_rephrase_gives_other_training_phrasings():
    s = _sample("add_shape")
    rng = np.random.default_rng(0)
    texts = {suite.rephrase(s, rng) for _ in range(20)}
    assert len(texts) >= 3 and all("small" in t or "medium" in t or "large" in t for t in texts)
    held = {suite.rephrase(s, rng, heldout=True) for _ in range(20)}
    assert not texts & held
    assert next(suite.stream("test", seed=0, corpus="/nonexistent"))["kind"] in KINDS
