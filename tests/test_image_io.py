"""engine.image_io on real files written here: odd modes, EXIF rotation, broken files, bombs, sizes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.image_io import (
    ImageInputError,
    fit_to_area,
    load_image,
    prepare_image,
    target_size,
)


def _png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def _photo(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# -- modes ---------------------------------------------------------------------------------------


def test_png_with_alpha_is_flattened_on_white(tmp_path):
    arr = np.zeros((10, 20, 4), np.uint8)
    arr[:, :10] = (255, 0, 0, 255)  # left: opaque red
    arr[:, 10:] = (0, 0, 255, 0)  # right: fully transparent blue
    arr[0, 0] = (0, 0, 0, 128)  # half-transparent black
    path = tmp_path / "alpha.png"
    Image.fromarray(arr, "RGBA").save(path)
    im = load_image(path)
    assert im.mode == "RGB" and im.size == (20, 10)
    out = np.asarray(im)
    assert tuple(out[5, 2]) == (255, 0, 0)
    assert tuple(out[5, 15]) == (255, 255, 255)
    assert all(abs(int(v) - 127) <= 1 for v in out[0, 0])


def test_la_and_palette_with_transparency(tmp_path):
    la = Image.new("LA", (8, 8), (0, 0))  # black, fully transparent
    assert tuple(np.asarray(load_image(_png_bytes(la)))[3, 3]) == (255, 255, 255)

    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 255, 0] + [255, 0, 0] * 255)  # index 0 green, others red
    pal.putpixel((1, 1), 1)
    path = tmp_path / "pal.png"
    pal.save(path, transparency=0)  # index 0 transparent
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    out = np.asarray(load_image(path))
    assert tuple(out[0, 0]) == (255, 255, 255)  # transparent green -> white
    assert tuple(out[1, 1]) == (255, 0, 0)


def test_palette_png_without_transparency(tmp_path):
    src = _photo(32, 16).quantize(colors=16)
    assert src.mode == "P"
    path = tmp_path / "p.png"
    src.save(path)
    im = load_image(path)
    assert im.mode == "RGB"
    assert np.array_equal(np.asarray(im), np.asarray(src.convert("RGB")))


def test_16_bit_grayscale_png(tmp_path):
    arr = np.full((6, 10), 65535, np.uint16)
    arr[:, :5] = 257 * 100  # -> 100 in 8 bits
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # really a 16-bit file
    out = np.asarray(load_image(path))
    assert out.shape == (6, 10, 3)
    assert tuple(out[0, 0]) == (100, 100, 100) and tuple(out[0, 9]) == (255, 255, 255)


def test_16_bit_rgb_png(tmp_path):
    # Pillow cannot write 48-bit PNGs, so write one by hand: two pixels, big-endian 16-bit samples.
    rows = [(0, [(65535, 0, 0), (0, 0, 257 * 7)])]
    raw = b"".join(bytes([f]) + b"".join(struct.pack(">HHH", *px) for px in row) for f, row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    out = np.asarray(load_image(png))
    assert out.shape == (1, 2, 3)
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 1]) == (0, 0, 7)


def test_cmyk_and_grayscale_jpeg():
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buf, "JPEG", quality=95)  # red in CMYK
    r, g, b = np.asarray(load_image(buf.getvalue()))[8, 8]
    assert r > 200 and g < 60 and b < 60
    buf = io.BytesIO()
    Image.new("L", (16, 16), 77).save(buf, "JPEG", quality=95)
    out = np.asarray(load_image(buf.getvalue()))
    assert out.shape == (16, 16, 3) and abs(int(out[4, 4, 0]) - 77) <= 2


def test_bilevel_and_pil_input_not_mutated():
    src = Image.new("1", (9, 7), 1)
    im = load_image(src)
    assert im.mode == "RGB" and im is not src and src.mode == "1"
    assert tuple(np.asarray(im)[0, 0]) == (255, 255, 255)
    rgb = _photo(8, 8)
    out = load_image(rgb)
    assert out is not rgb and np.array_equal(np.asarray(out), np.asarray(rgb))


def test_exif_orientation_6_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)  # landscape 40×20, left half red, right half blue
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(path, "JPEG", exif=exif, quality=95)
    im = load_image(path)
    assert im.size == (20, 40)  # portrait once displayed
    out = np.asarray(im).astype(int)
    top, bottom = out[5, 10], out[35, 10]  # 90° clockwise: the left half ends up on top
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = np.asarray(load_image(buf.getvalue()))
    assert out[0, 0, 0] > 200 and out[0, 0, 1] < 60


def test_binary_file_object(tmp_path):
    path = tmp_path / "x.png"
    _photo(10, 10).save(path)
    with open(path, "rb") as f:
        assert load_image(f).size == (10, 10)


# -- bad input -----------------------------------------------------------------------------------


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    _photo(256, 256).save(buf, "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageInputError, match="truncated or corrupt") as e:
        load_image(path)
    assert "cut.jpg" in str(e.value)


def test_random_bytes_and_text_are_not_images(tmp_path):
    rng = np.random.default_rng(1)
    with pytest.raises(ImageInputError, match="not an image"):
        load_image(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    path = tmp_path / "notes.png"  # a misleading extension changes nothing
    path.write_text("hello, this is not a picture")
    with pytest.raises(ImageInputError, match="not an image"):
        load_image(path)


def test_formats_outside_the_allow_list_are_refused():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"  # Pillow would run Ghostscript
    with pytest.raises(ImageInputError, match="not an image"):
        load_image(eps)
    for fmt in ("WEBP", "BMP", "TIFF", "GIF"):
        buf = io.BytesIO()
        _photo(8, 8).save(buf, fmt)
        assert load_image(buf.getvalue()).size == (8, 8)


def test_empty_missing_folder_and_too_large(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageInputError, match="empty"):
        load_image(empty)
    with pytest.raises(ImageInputError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageInputError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageInputError, match="folder"):
        load_image(tmp_path)
    data = _png_bytes(_photo(64, 64))
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(ImageInputError, match="too large"):
        load_image(path, max_bytes=len(data) - 1)
    with pytest.raises(ImageInputError, match="too large"):
        load_image(data, max_bytes=100)
    assert load_image(path, max_bytes=len(data)).size == (64, 64)
    with pytest.raises(ImageInputError):
        load_image(12345)  # type: ignore[arg-type]


def _bomb_png(side: int = 30000) -> bytes:
    """A real, valid 1-bit PNG of side×side pixels (all black) that compresses to ~100 KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    block = row * 1000
    parts = [comp.compress(block) for _ in range(side // 1000)]
    parts.append(comp.compress(row * (side % 1000)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_rejected(tmp_path):
    data = _bomb_png()
    assert len(data) < 200_000  # tiny file ...
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    assert struct.unpack(">II", data[16:24]) == (30000, 30000)  # ... claiming 900 MP
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)  # Pillow alone refuses it too, but with an exception type users don't see
    with pytest.raises(ImageInputError, match="decompression bomb"):
        load_image(path)
    # Our own (lower) limit applies before Pillow's global one.
    with pytest.raises(ImageInputError, match="above the limit"):
        load_image(_png_bytes(_photo(100, 100)), max_pixels=9999)
    with pytest.raises(ImageInputError, match="above the limit"):
        load_image(_photo(100, 100), max_pixels=9999)


# -- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, area, factor, expected",
    [
        ((640, 640), 128 * 128, 8, (128, 128)),  # square photo at EARL-nano's area -> 16×16 grid
        ((50, 50), 128 * 128, 8, (128, 128)),  # small images are upscaled
        ((1024, 1024), 256 * 256, 8, (256, 256)),  # EARL's area -> 32×32 grid
        ((4000, 3000), 128 * 128, 8, (144, 112)),
        ((3000, 4000), 128 * 128, 8, (112, 144)),
        ((1920, 1080), 128 * 128, 8, (168, 96)),
        ((1920, 1080), 256 * 256, 8, (344, 192)),
        ((5000, 100), 128 * 128, 8, (256, 64)),  # 50:1 -> capped at 4:1
        ((100, 5000), 128 * 128, 8, (64, 256)),
        ((333, 777), 64 * 64, 16, (48, 96)),
        ((300, 200), 8 * 8, 8, (8, 8)),  # never below one factor per side
    ],
)
def test_fit_to_area_sizes(size, area, factor, expected):
    out = fit_to_area(_photo(*size), area, factor)
    assert out.size == expected == target_size(*size, area, factor)
    assert out.width % factor == 0 and out.height % factor == 0
    assert out.mode == "RGB"


def test_fit_keeps_content_aligned_and_crops_extreme_aspect():
    # A 4:1 image with a red left quarter stays a red left quarter (no stretch, no shift) ...
    arr = np.zeros((100, 400, 3), np.uint8)
    arr[:, :100] = (255, 0, 0)
    out = np.asarray(fit_to_area(Image.fromarray(arr), 128 * 128, 8)).astype(int)
    assert out.shape == (64, 256, 3)
    assert out[32, 20, 0] > 200 and out[32, 100, 0] < 40
    # ... while an 8:1 image loses its outer quarters: center-cropped to 4:1 before resizing.
    arr = np.zeros((100, 800, 3), np.uint8)
    arr[:, :200] = (255, 0, 0)  # outer left quarter red -> cropped away
    out = np.asarray(fit_to_area(Image.fromarray(arr), 128 * 128, 8)).astype(int)
    assert out.shape == (64, 256, 3) and out[:, 8:, 0].max() < 40


def test_fit_rejects_bad_arguments():
    with pytest.raises(ValueError):
        fit_to_area(_photo(), 10, 8)  # less than one token
    with pytest.raises(ValueError):
        fit_to_area(_photo(), 128 * 128, 0)


def test_prepare_image_from_large_jpeg(tmp_path):
    path = tmp_path / "big.jpg"
    _photo(1600, 1200).save(path, "JPEG", quality=85)  # takes the JPEG draft (fast decode) path
    out = prepare_image(path, 128 * 128, 8)
    assert out.size == (144, 112) and out.mode == "RGB"
    with pytest.raises(ImageInputError):
        prepare_image(b"nonsense", 128 * 128, 8)


def test_embedded_icc_profile_path(tmp_path):
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = _photo(16, 16)
    path = tmp_path / "icc.png"
    src.save(path, icc_profile=srgb)
    out = np.asarray(load_image(path)).astype(int)  # sRGB -> sRGB: the pixels barely move
    assert np.abs(out - np.asarray(src).astype(int)).max() <= 3
    path = tmp_path / "badicc.png"
    src.save(path, icc_profile=b"not a profile")
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(src))  # broken profile: ignored
