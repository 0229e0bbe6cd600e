"""Verifier: orderings for every edit kind, tolerance to VQ-like reconstruction, formulas, API."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from training import verifier
from training.data import suite
from training.data.edits import KINDS, render_wrong

PHOTOS = suite.split_photos("test", root=None)


@pytest.mark.parametrize("kind", list(KINDS))
def test_orderings_for_every_kind(kind):
    for j in range(2):
        rng = np.random.default_rng([5, j, list(KINDS).index(kind)])
        s = suite.make_sample(kind, PHOTOS, rng, "v")
        src, tgt, m = s["source"], s["target"], s["mask"]
        gt = verifier.score(src, tgt, tgt, m)
        vq = verifier.score(src, verifier.vq_like_degrade(tgt, rng), tgt, m)
        unedited = verifier.score(src, src, tgt, m)
        assert gt.overall > 9.9
        assert vq.overall > 7.5, (kind, vq)
        assert unedited.overall < 2.0, (kind, unedited)
        for label, wp in KINDS[kind].wrongs(s["params"], rng):
            wrong = verifier.score(src, render_wrong(kind, s["crop"], wp).target, tgt, m)
            assert wrong.overall < gt.overall - 3, (kind, label, wrong)
            assert wrong.overall >= unedited.overall - 1.0 or wrong.overall < 2.0, (kind, label)


def _toy():
    src = np.zeros((32, 32, 3), np.float32) + 0.2
    tgt = src.copy()
    tgt[:16, :16] = 0.9
    m = np.zeros((32, 32), bool)
    m[:16, :16] = True
    return src, tgt, m


def test_formulas_on_a_toy_case():
    src, tgt, m = _toy()
    assert verifier.score(src, tgt, tgt, m).success == pytest.approx(10)
    assert verifier.score(src, src, tgt, m).success == pytest.approx(0)
    near, half = src.copy(), src.copy()
    near[:16, :16] = 0.75
    half[:16, :16] = 0.55
    s_near = verifier.score(src, near, tgt, m).success
    assert 5 < s_near < 10
    assert verifier.score(src, half, tgt, m).success < s_near
    # the same change made in the wrong place: no over-editing score left
    wrong = src.copy()
    wrong[16:, 16:] = 0.9
    r = verifier.score(src, wrong, tgt, m)
    assert r.success == pytest.approx(0) and r.overedit < 4 and r.overall == pytest.approx(0)
    full = verifier.score(src, tgt, tgt, None)
    assert full.overedit == 10 and full.overall == pytest.approx(10)


def test_pq_penalises_blur_noise_blocks():
    rng = np.random.default_rng(0)
    img = PHOTOS[0][1].resize((128, 128))
    a = np.asarray(img).astype(np.float32)
    blurry = img.filter(ImageFilter.GaussianBlur(4))
    noisy = Image.fromarray(np.clip(a + rng.normal(0, 40, a.shape), 0, 255).astype(np.uint8))
    blocky = img.resize((16, 16), Image.Resampling.BOX).resize((128, 128), Image.Resampling.NEAREST)
    assert verifier.score(img, img, img).pq == pytest.approx(10)
    for bad in (blurry, noisy, blocky):
        assert verifier.score(img, bad, img).pq < 7


def test_api_accepts_pil_arrays_and_resizes():
    src, tgt, m = _toy()
    u8 = lambda x: (x * 255).astype(np.uint8)  # noqa: E731
    r1 = verifier.score(u8(src), u8(tgt), u8(tgt), Image.fromarray(u8(m.astype(np.float32))))
    big = Image.fromarray(u8(tgt)).resize((64, 64), Image.Resampling.NEAREST)
    r2 = verifier.score(Image.fromarray(u8(src)), big, Image.fromarray(u8(tgt)), m)
    assert r1.overall > 9.9 and r2.overall > 9.0
    assert set(r1.as_dict()) == {"success", "overedit", "sc", "pq", "overall"}
    with pytest.raises(ValueError, match="mask shape"):
        verifier.score(src, tgt, tgt, np.ones((8, 8), bool))


@pytest.fixture(scope="module")
def flip():
    return suite.make_sample("hflip", PHOTOS, np.random.default_rng(3), "c")


@pytest.mark.parametrize("name", list(verifier.SHAPING))
def test_shaping_scores_put_target_at_10_and_source_at_0(flip, name):
    src, tgt = flip["source"], flip["target"]
    assert verifier.SHAPING[name](src, tgt, tgt) == pytest.approx(10.0, abs=1e-6)
    # the correlation score puts a copy at the bottom and a flat image at 0 (next test)
    copy = verifier.SHAPING[name](src, src, tgt)
    assert copy == pytest.approx(-10.0 if name == "layout_corr" else 0.0, abs=1e-6)
    # eval prints each score's legend from SHAPING_ZERO: it must say where the source lands
    assert ("-10 = the source" in verifier.SHAPING_ZERO[name]) == (copy == pytest.approx(-10.0))


def test_closeness_ranks_outputs_that_score_zero(flip):
    """The shaping score separates failed flips by their coarse layout, where ``score`` gives all of them 0."""
    s, src, tgt = flip, flip["source"], flip["target"]
    coarse_flip = tgt.resize((3, 3), Image.Resampling.BOX).resize(tgt.size, Image.Resampling.BICUBIC)  # layout only
    flat = Image.new("RGB", src.size, (128, 128, 128))
    assert verifier.score(src, coarse_flip, tgt, s["mask"]).overall < 2  # both fail the verifier…
    assert verifier.closeness(src, coarse_flip, tgt) > 3 > 0 > verifier.closeness(src, flat, tgt)  # …but rank


def test_layout_closeness_ignores_the_palette(flip):
    src, tgt = flip["source"], flip["target"]
    # the flipped layout in the wrong colours: `closeness` penalises the palette, the layout score does not
    tinted = Image.fromarray((np.asarray(tgt, np.float32) * [0.6, 0.9, 1.0] + [60, 0, 0]).clip(0, 255).astype(np.uint8))
    assert verifier.layout_closeness(src, tinted, tgt) > 7 > verifier.closeness(src, tinted, tgt)
    flat = Image.new("RGB", src.size, (128, 128, 128))
    assert verifier.layout_closeness(src, flat, tgt) < verifier.layout_closeness(src, tinted, tgt)


def test_layout_correlation_does_not_pay_for_flat_outputs(flip):
    src, tgt = flip["source"], flip["target"]
    flat = Image.new("RGB", src.size, (128, 128, 128))
    tinted = Image.fromarray((np.asarray(tgt, np.float32) * [0.6, 0.9, 1.0] + [60, 0, 0]).clip(0, 255).astype(np.uint8))
    copy, right, f = (verifier.layout_correlation(src, x, tgt) for x in (src, tgt, flat))
    assert (copy, f, right) == pytest.approx((-10.0, 0.0, 10.0), abs=1e-6)
    assert verifier.layout_correlation(src, tinted, tgt) > 8  # the palette does not count
    half = Image.blend(src, tgt, 0.5)  # both layouts at once: in between, not rewarded like the target
    assert -5 < verifier.layout_correlation(src, half, tgt) < 5


def test_layout_correlation_is_neutral_where_the_layout_is_kept():
    """On a colour edit corr(s, t) ≈ 1: the score would only amplify noise, so every output gets 0."""
    s = suite.make_sample("brighter", PHOTOS, np.random.default_rng(4), "c")
    src, tgt = s["source"], s["target"]
    noisy = Image.fromarray((np.asarray(tgt, np.float32) + np.random.default_rng(0).normal(0, 20, (*tgt.size[::-1], 3)))
                            .clip(0, 255).astype(np.uint8))
    flip = src.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert {verifier.layout_correlation(src, x, tgt) for x in (src, tgt, noisy, flip)} == {0.0}


def test_a_quarter_turn_of_a_landscape_photo_must_come_out_portrait():
    """A right portrait answer scores well; keeping the landscape shape scores low (the output is compared at
    the target's size, so a landscape picture is squeezed into the portrait frame), and nothing crashes."""
    landscape = [(pid, p.crop((0, 0, 192, 128))) for pid, p in PHOTOS]
    for j, direction in enumerate(("clockwise", "counterclockwise")):
        rng = np.random.default_rng([9, j])
        pid, crop = landscape[j % len(landscape)]
        res = KINDS["rotate90"].render(crop, {"dir": direction})
        src, tgt, m = res.source, res.target, res.mask
        assert tgt.size == (128, 192) and m.shape == (192, 128)
        right = verifier.score(src, verifier.vq_like_degrade(tgt, rng), tgt, m)
        assert right.overall > 7.5, right
        kept = [src, src.transpose(Image.Transpose.FLIP_LEFT_RIGHT), tgt.resize(src.size, Image.Resampling.BICUBIC)]
        for out in kept:
            assert out.size == (192, 128)
            assert verifier.score(src, out, tgt, m).overall < 3.0
        other = "counterclockwise" if direction == "clockwise" else "clockwise"
        wrong_turn = KINDS["rotate90"].render(crop, {"dir": other}).target
        assert verifier.score(src, wrong_turn, tgt, m).overall < right.overall - 3
        assert all(-10 <= f(src, kept[0], tgt) <= 10 for f in verifier.SHAPING.values())  # ranks, no crash
