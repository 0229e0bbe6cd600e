"""engine.render on real photos (scikit-image's samples): what the model's output says, at full resolution."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.image_io import fit_box, fit_to_area, load_image
from engine.render import D4, find_geometry, render_full

AREA, FACTOR = 128 * 128, 8
REPO = Path(__file__).resolve().parent.parent


def _photo(w: int = 600, h: int = 400) -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.coffee()).resize((w, h), Image.Resampling.LANCZOS)


def _arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"))


def _img(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def _psnr(a: Image.Image, b: Image.Image) -> float:
    d = _arr(a).astype(np.float64) - _arr(b).astype(np.float64)
    return float(10 * np.log10(255**2 / max((d * d).mean(), 1e-12)))


def test_fit_box_is_the_region_fit_to_area_keeps():
    for w, h in [(600, 400), (401, 299), (1000, 100), (90, 700), (128, 128)]:
        for aspects in ((), (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3)):  # the photo's own shape, or a trained one
            im = _photo(w, h)
            small = fit_to_area(im, AREA, FACTOR, aspects=aspects)
            box = fit_box(w, h, small.size)
            again = im.resize(small.size, Image.Resampling.LANCZOS, box=box)
            assert _psnr(again, small) > 35, (w, h, aspects, box)


def test_a_photo_is_shown_to_the_model_in_the_nearest_shape_it_was_trained_on():
    shapes = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3)
    for (w, h), want in [((512, 600), (112, 144)), ((1920, 1080), (160, 104)), ((300, 427), (104, 160)),
                         ((4000, 3000), (144, 112)), ((640, 640), (128, 128))]:
        assert fit_to_area(_photo(w, h), AREA, FACTOR, aspects=shapes).size == want, (w, h)
    assert fit_to_area(_photo(512, 600), AREA, FACTOR).size == (120, 136)  # no shapes given: its own


def test_unchanged_output_gives_back_the_original_exactly():
    photo = _photo()
    src = fit_to_area(photo, AREA, FACTOR)
    res = render_full(photo, src, src.copy())
    assert res.image.size == photo.size and np.array_equal(_arr(res.image), _arr(photo))
    assert res.image is not photo
    assert res.provenance["method"] == "unchanged" and res.provenance["changed_fraction"] == 0


@pytest.mark.parametrize("name", list(D4))
def test_every_symmetry_is_found_and_applied_exactly(name):
    photo = _photo(400, 400) if D4[name].transpose else _photo()
    src = fit_to_area(photo, AREA, FACTOR)
    g = D4[name]
    a = _arr(src)
    if g.transpose:
        a = a.swapaxes(0, 1)
    if g.flip_x:
        a = a[:, ::-1]
    if g.flip_y:
        a = a[::-1]
    res = render_full(photo, src, _img(a.copy()))
    assert res.provenance["transform"]["name"] == name
    expected = photo if name == "identity" else photo.transpose({
        "hflip": Image.Transpose.FLIP_LEFT_RIGHT, "vflip": Image.Transpose.FLIP_TOP_BOTTOM,
        "rotate180": Image.Transpose.ROTATE_180, "transpose": Image.Transpose.TRANSPOSE,
        "rotate90_cw": Image.Transpose.ROTATE_270, "rotate90_ccw": Image.Transpose.ROTATE_90,
        "transverse": Image.Transpose.TRANSVERSE}[name])
    assert np.array_equal(_arr(res.image), _arr(expected))


def test_a_landscape_photo_turned_90_degrees_comes_out_portrait():
    photo = _photo(640, 360)
    src = fit_to_area(photo, AREA, FACTOR)
    out = _img(np.rot90(_arr(src), -1))  # clockwise
    res = render_full(photo, src, out)
    assert out.height > out.width and res.image.size == (360, 640)
    assert res.provenance["transform"]["name"] == "rotate90_cw"
    assert np.array_equal(_arr(res.image), np.rot90(_arr(photo), -1))


@pytest.mark.parametrize("name", [n for n, g in D4.items() if g.transpose])
def test_every_transposing_symmetry_of_a_landscape_photo_comes_out_portrait(name):
    photo = _photo(600, 400)
    src = fit_to_area(photo, AREA, FACTOR)
    expected = photo.transpose({"transpose": Image.Transpose.TRANSPOSE, "rotate90_cw": Image.Transpose.ROTATE_270,
                                "rotate90_ccw": Image.Transpose.ROTATE_90,
                                "transverse": Image.Transpose.TRANSVERSE}[name])
    out = src.transpose({"transpose": Image.Transpose.TRANSPOSE, "rotate90_cw": Image.Transpose.ROTATE_270,
                         "rotate90_ccw": Image.Transpose.ROTATE_90, "transverse": Image.Transpose.TRANSVERSE}[name])
    res = render_full(photo, src, out)
    assert set(res.provenance["geometry_scores"]) == {n for n, g in D4.items() if g.transpose}
    assert res.provenance["transform"]["name"] == name and res.image.size == (400, 600)
    assert np.array_equal(_arr(res.image), _arr(expected))


def test_a_transposed_noise_output_falls_back_in_its_own_portrait_shape():
    photo = _photo(600, 400)
    src = fit_to_area(photo, AREA, FACTOR)
    noise = _img(np.random.default_rng(1).integers(0, 256, (src.width, src.height, 3)))  # W×H: portrait
    res = render_full(photo, src, noise)
    assert res.provenance["method"] == "upsampled"
    x0, y0, x1, y1 = fit_box(*photo.size, src.size)
    assert res.image.size == (round(y1 - y0), round(x1 - x0)) and res.image.height > res.image.width


def test_a_known_affine_colour_map_is_recovered():
    photo = _photo()
    src = fit_to_area(photo, AREA, FACTOR)
    m = np.array([[0.5, 0.3, 0.1], [0.1, 0.9, -0.2], [0.2, 0.1, 0.6]])
    b = np.array([20.0, -10.0, 40.0])
    out = _img(_arr(src).astype(np.float64) @ m.T + b)
    res = render_full(photo, src, out)
    truth = _img(_arr(photo).astype(np.float64) @ m.T + b)
    assert res.provenance["colour"] == "global" and res.provenance["transform"]["name"] == "identity"
    assert _psnr(res.image, truth) > 40
    assert _psnr(out.resize(photo.size, Image.Resampling.BICUBIC), truth) < 35  # what upscaling would give


def test_a_zoom_is_found_and_resampled_from_the_original():
    photo = _photo(640, 416)  # exactly the model's aspect: the model saw all of it
    src = fit_to_area(photo, AREA, FACTOR)
    w, h = src.size
    out = src.resize(src.size, Image.Resampling.BICUBIC, box=(w / 2, 0, w, h / 2))  # 2x on the top right
    res = render_full(photo, src, out)
    assert res.provenance["transform"]["name"] == "zoom"
    assert np.allclose(res.provenance["transform"]["window"], (w / 2, 0, w, h / 2), atol=1.0)
    truth = photo.resize(photo.size, Image.Resampling.BICUBIC, box=(320, 0, 640, 208))
    assert res.image.size == photo.size and _psnr(res.image, truth) > 35


def test_noise_falls_back_to_the_upsampled_output():
    photo = _photo()
    src = fit_to_area(photo, AREA, FACTOR)
    noise = _img(np.random.default_rng(0).integers(0, 256, (src.height, src.width, 3)))
    res = render_full(photo, src, noise)
    assert res.provenance["method"] == "upsampled" and res.provenance["changed_fraction"] > 0.5
    x0, y0, x1, y1 = fit_box(*photo.size, src.size)
    assert res.image.size == (round(x1 - x0), round(y1 - y0))
    assert np.array_equal(_arr(res.image), _arr(noise.resize(res.image.size, Image.Resampling.BICUBIC)))


def test_a_local_edit_leaves_every_pixel_outside_the_changed_area_identical():
    photo = _photo()
    src = fit_to_area(photo, AREA, FACTOR)
    a = _arr(src).copy()
    a[30:60, 40:80] = (230, 20, 20)  # a red box the model "added"
    res = render_full(photo, src, _img(a))
    p = res.provenance
    assert p["method"] == "geometry+colour+content" and p["colour"] == "identity" and 0 < p["changed_fraction"] < 0.2
    diff = (_arr(res.image) != _arr(photo)).any(-1)
    ys, xs = np.nonzero(diff)
    x0, y0, x1, y1 = fit_box(*photo.size, src.size)
    sx, sy = (x1 - x0) / src.width, (y1 - y0) / src.height
    # changes stay within the box plus the feathering margin (a few model pixels)
    m = 6
    assert xs.min() >= x0 + (40 - m) * sx and xs.max() <= x0 + (80 + m) * sx
    assert ys.min() >= y0 + (30 - m) * sy and ys.max() <= y0 + (60 + m) * sy
    inside = _arr(res.image)[int(y0 + 40 * sy), int(x0 + 60 * sx)]
    assert inside[0] > 200 and inside[1] < 60  # the new content is there, at full resolution


def test_a_flip_asked_for_without_new_content_leaves_the_models_wrong_cells_out():
    photo = _photo()
    src = fit_to_area(photo, AREA, FACTOR)
    a = _arr(src)[:, ::-1].copy()
    a[30:60, 40:80] = (230, 20, 20)  # cells the model got wrong while flipping
    with_content = render_full(photo, src, _img(a))
    assert with_content.provenance["method"] == "geometry+colour+content"
    res = render_full(photo, src, _img(a), new_content=False)
    p = res.provenance
    assert p["method"] == "geometry+colour" and p["transform"]["name"] == "hflip"
    assert 0 < p["content_left_out"] == p["changed_fraction"]
    assert np.array_equal(_arr(res.image), _arr(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))


def test_black_and_white_asked_for_loses_the_tokenizers_tint_but_not_a_colour_failure():
    photo = _photo()
    src = fit_to_area(photo, AREA, FACTOR)
    grey = _arr(src).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    tinted = _img(np.stack([grey - 6, grey, grey + 6], axis=-1))  # grey with a faint blue tint
    plain = render_full(photo, src, tinted)
    assert np.abs(_arr(plain.image).astype(int) - _arr(plain.image).mean(-1, keepdims=True)).max() > 3
    res = render_full(photo, src, tinted, new_content=False, neutral=True)
    a = _arr(res.image)
    assert res.provenance["neutral"] and (a == a[..., :1]).all()  # no colour left
    assert abs(float(a.mean()) - float(_arr(plain.image).mean())) < 2  # the brightness the model chose
    # a colourful output (the model did not make it grey) is left as it is
    kept = render_full(photo, src, _img(_arr(src) * 0.9), new_content=False, neutral=True)
    assert "neutral" not in kept.provenance and not (_arr(kept.image) == _arr(kept.image)[..., :1]).all()


def test_exif_rotated_photo(tmp_path):
    photo = _photo(300, 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90° clockwise
    path = tmp_path / "sideways.jpg"
    photo.save(path, quality=95, exif=exif)
    original = load_image(path)
    assert original.size == (200, 300)
    src = fit_to_area(original, AREA, FACTOR)
    res = render_full(original, src, src.copy())
    assert np.array_equal(_arr(res.image), _arr(original))
    flipped = render_full(original, src, src.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert flipped.image.size == (200, 300)
    assert np.array_equal(_arr(flipped.image), _arr(original)[:, ::-1])
    turned = render_full(original, src, src.transpose(Image.Transpose.ROTATE_270))  # a quarter turn clockwise
    assert turned.provenance["transform"]["name"] == "rotate90_cw" and turned.image.size == (300, 200)
    assert np.array_equal(_arr(turned.image), np.rot90(_arr(original), -1))


def test_a_one_pixel_photo():
    photo = Image.new("RGB", (1, 1), (200, 100, 50))
    src = fit_to_area(photo, AREA, FACTOR)
    assert render_full(photo, src, src.copy()).image.tobytes() == photo.tobytes()
    gray = src.convert("L").convert("RGB")
    res = render_full(photo, src, gray)
    assert res.image.size == (1, 1)
    r, g, b = res.image.getpixel((0, 0))
    assert abs(r - g) <= 3 and abs(g - b) <= 3  # grayscale, at the photo's one pixel


def test_geometry_prefers_no_change_for_a_local_edit():
    src = fit_to_area(_photo(), AREA, FACTOR)
    a = _arr(src).copy()
    a[10:30, 10:30] = 0
    g, scores = find_geometry(src, _img(a))
    assert g.name == "identity" and scores["identity"] < scores["hflip"]


def test_a_64_megapixel_photo_renders_in_bounded_memory():
    """A float32 copy of a 64 MP photo is 768 MB: the render must stay well below that on top of the
    photo itself (peak resident memory of a fresh process, measured with ``resource``)."""
    code = textwrap.dedent("""
        import json, resource, numpy as np
        from PIL import Image
        import skimage.data
        from engine.image_io import fit_to_area
        from engine.render import render_full
        small = Image.fromarray(skimage.data.coffee())
        photo = small.resize((8192, 8192), Image.Resampling.BILINEAR)
        src = fit_to_area(photo, 128 * 128, 8)
        a = np.asarray(src, np.float32)
        out = Image.fromarray(np.clip(a[:, ::-1] * 0.8 + 30, 0, 255).astype(np.uint8))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        res = render_full(photo, src, out)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"size": res.image.size, "name": res.provenance["transform"]["name"],
                          "colour": res.provenance["colour"], "grew_mb": (after - before) // 1024,
                          "got": res.image.getpixel((100, 5000)), "src": photo.getpixel((8191 - 100, 5000))}))
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["size"] == [8192, 8192] and out["name"] == "hflip" and out["colour"] == "global", out
    assert out["grew_mb"] < 600, out  # the photo is 192 MB; a float32 copy alone would be 768 MB
    assert all(abs(g - (0.8 * s + 30)) <= 3 for g, s in zip(out["got"], out["src"], strict=True)), out


def test_edit_returns_full_resolution_candidates(tiny_bundle):
    from engine.api import edit_blocking

    photo = _photo(200, 120)
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    done = edit_blocking(tiny_bundle, buf.getvalue(), "make it grayscale", n=2, seed=0, preview_every=0)
    for d in done:
        assert d.full is not None and d.render["method"] in ("unchanged", "geometry+colour",
                                                             "geometry+colour+content", "upsampled")
        assert d.image.size == (80, 48) and "render" in d.timings
        if d.render["method"] != "upsampled":
            assert d.full.size == photo.size
    raw = edit_blocking(tiny_bundle, buf.getvalue(), "make it grayscale", n=1, seed=0, full_resolution=False)
    assert raw[0].full is None and raw[0].render == {}
    assert np.array_equal(_arr(raw[0].image), _arr(done[0].image))
