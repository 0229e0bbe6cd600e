"""Image input: whatever a user hands us -> a clean RGB picture sized for the image tokenizer.

``load_image`` accepts a path, raw bytes, a binary file object or a PIL image and returns an RGB PIL
image: EXIF orientation applied, embedded colour profiles converted to sRGB, transparency flattened on
white, 16-bit / CMYK / grayscale / palette modes converted, first frame of animations. Anything that
is not a usable image raises ``ImageInputError`` (a ``ValueError``) whose message can be shown to a
user as is.

``fit_to_area`` resizes to about ``area`` pixels keeping the aspect ratio, with both sides multiples of
the tokenizer's ``spatial_factor`` (Emu3/EARL: area 256², factor 8 -> a 32×32 code grid for a square
photo; EARL-nano: 128² -> 16×16). Extreme aspect ratios are capped: an image longer than
``max_aspect`` : 1 (4 : 1 by default) is center-cropped to exactly that ratio first, because a very thin
image would leave one side of the code grid only a token or two wide (and EARL trained on ordinary
photo shapes). Snapping never stretches: the image is scaled to cover the snapped size and the few
left-over pixels (< one factor) are center-cropped.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_BYTES = 50 * 1024 * 1024  # 50 MiB: far above any phone photo, far below harm
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024  # 64 MP: a 9000×7000 photo passes, a decompression bomb doesn't
DEFAULT_MAX_ASPECT = 4.0

# Photo formats we decode. An allow-list, because Pillow would also open e.g. EPS by running Ghostscript
# on the upload, and exotic scientific/legacy formats are attack surface with no use here.
ALLOWED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "DIB", "TIFF", "AVIF", "PPM", "TGA", "ICO", "QOI")

ImageSource = str | Path | bytes | bytearray | memoryview | BinaryIO | Image.Image

__all__ = [
    "ImageInputError",
    "load_image",
    "fit_to_area",
    "prepare_image",
    "target_size",
    "fit_box",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_ASPECT",
]


class ImageInputError(ValueError):
    """The input is not a usable image; ``str(e)`` is a message meant for the user."""


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def _read_source(src: ImageSource, max_bytes: int) -> tuple[bytes, str]:
    """Bytes of ``src`` (size-checked before reading when possible) and a name for messages."""
    if isinstance(src, (str, Path)):
        path = Path(src)
        name = path.name or str(path)
        if not path.exists():
            raise ImageInputError(f"File not found: {path}")
        if path.is_dir():
            raise ImageInputError(f"{path} is a folder, not an image file")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageInputError(f"{name} is too large ({_mb(size)}); the limit is {_mb(max_bytes)}")
        data = path.read_bytes()
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data, name = bytes(src), "the uploaded data"
    elif hasattr(src, "read"):
        name = str(getattr(src, "name", "the uploaded file"))
        data = src.read(max_bytes + 1)
        if not isinstance(data, bytes):
            raise ImageInputError("the file object must be opened in binary mode")
    else:
        raise ImageInputError(f"cannot read an image from a {type(src).__name__}")
    if len(data) == 0:
        raise ImageInputError(f"{name} is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageInputError(f"{name} is too large (more than {_mb(max_bytes)})")
    return data, name


def _check_pixels(size: tuple[int, int], max_pixels: int, name: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageInputError(f"{name} has an empty size ({w}×{h})")
    if w * h > max_pixels:
        raise ImageInputError(
            f"{name} is {w}×{h} pixels ({w * h / 1e6:.0f} MP), above the limit of {max_pixels / 1e6:.0f} MP; "
            "it may be a decompression bomb. Downscale it first."
        )


def _allowed_formats() -> list[str]:
    Image.init()
    return [f for f in ALLOWED_FORMATS if f in Image.OPEN]  # AVIF needs a Pillow built with libavif


def _open(data: bytes, name: str, max_pixels: int, draft_area: int | None) -> Image.Image:
    """Decode ``data`` fully (so errors surface here, not later), first frame only."""
    try:
        with warnings.catch_warnings():
            # Pillow warns, then errors, past its own global limit; treat its warning as an error too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=_allowed_formats())
            _check_pixels(im.size, max_pixels, name)  # from the header, before decoding anything
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            if draft_area and im.format == "JPEG":
                # Let the JPEG decoder downscale by 1/2../1/8 when we will shrink anyway (much faster
                # on phone photos); keep at least 2× the final side so the resize still has detail.
                s = math.sqrt(4 * draft_area / (im.width * im.height))
                if s < 1:
                    im.draft("RGB", (max(1, int(im.width * s)), max(1, int(im.height * s))))
            im.load()
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageInputError(f"{name} is too many pixels to open safely (possible decompression bomb): {e}") from e
    except UnidentifiedImageError as e:
        raise ImageInputError(
            f"{name} is not an image in a format we can read (PNG, JPEG, WebP, GIF, BMP, TIFF, AVIF; "
            "HEIC photos need converting to JPEG first)"
        ) from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError) as e:
        raise ImageInputError(f"{name} is truncated or corrupt and cannot be decoded ({e})") from e
    return im


def _to_srgb_profile(im: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert RGB/CMYK pixels with an embedded ICC profile to sRGB; unchanged when there is none."""
    if not icc or im.mode not in ("RGB", "CMYK"):
        return im
    try:
        from PIL import ImageCms  # needs Pillow built with LittleCMS; without it, keep the pixels
    except ImportError:
        return im
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return im  # a broken profile is not worth rejecting the photo for


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency composited on white."""
    icc = im.info.get("icc_profile")
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        # 16-bit data (PNG/TIFF) spans 0..65535; 32-bit int/float data is assumed to be 0..65535 when it
        # exceeds 255, else already 0..255 (float in 0..1 is scaled up).
        if mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        elif mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa") or (mode in ("L", "RGB") and "transparency" in im.info):
        im = im.convert("RGBA")
    elif mode == "CMYK":
        im = _to_srgb_profile(im, icc)
        if im.mode == "CMYK":
            im = im.convert("RGB")
    if im.mode == "RGBA":
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im).convert("RGB")
        im = _to_srgb_profile(im, icc)
    elif im.mode == "RGB":
        im = _to_srgb_profile(im, icc)
    else:
        try:
            im = im.convert("RGB")
        except (ValueError, OSError) as e:
            raise ImageInputError(f"images in colour mode {im.mode} are not supported") from e
    return im


def load_image(
    src: ImageSource,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    _draft_area: int | None = None,
) -> Image.Image:
    """Open ``src`` as an RGB image (EXIF orientation applied, alpha flattened on white).

    Raises ``ImageInputError`` with a user-facing message for files that are missing, empty, too large
    (``max_bytes``), too many pixels (``max_pixels``, decompression bombs), not images, or corrupt.
    """
    if isinstance(src, Image.Image):
        name = "the image"
        _check_pixels(src.size, max_pixels, name)
        im = src
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)
        try:
            im.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageInputError(f"{name} is truncated or corrupt and cannot be decoded ({e})") from e
    else:
        data, name = _read_source(src, max_bytes)
        im = _open(data, name, max_pixels, _draft_area)
    try:
        im = ImageOps.exif_transpose(im)
    except (OSError, ValueError, SyntaxError, struct.error, KeyError, TypeError):
        pass  # unreadable EXIF: keep the pixels as stored rather than reject the photo
    im = _to_rgb(im)
    if im is src:  # never hand back (and let callers mutate) the caller's own object
        im = im.copy()
    return im


def target_size(
    width: int, height: int, area: int, spatial_factor: int, max_aspect: float = DEFAULT_MAX_ASPECT,
    aspects: Sequence[float] = (),
) -> tuple[int, int]:
    """(width, height) that ``fit_to_area`` produces for a ``width``×``height`` image."""
    if area < spatial_factor * spatial_factor:
        raise ValueError(f"area {area} is smaller than one {spatial_factor}×{spatial_factor} token")
    aspect = min(max(width / height, 1 / max_aspect), max_aspect)
    if aspects:  # the nearest shape the model knows (by ratio): the picture is cropped to it
        aspect = min(aspects, key=lambda a: abs(math.log(a / aspect)))
    tw = math.sqrt(area * aspect)
    th = math.sqrt(area / aspect)
    f = spatial_factor
    return max(f, round(tw / f) * f), max(f, round(th / f) * f)


def _center_crop_to_aspect(img: Image.Image, max_aspect: float) -> Image.Image:
    w, h = img.size
    if w > h * max_aspect:
        nw = max(1, round(h * max_aspect))
        left = (w - nw) // 2
        return img.crop((left, 0, left + nw, h))
    if h > w * max_aspect:
        nh = max(1, round(w * max_aspect))
        top = (h - nh) // 2
        return img.crop((0, top, w, top + nh))
    return img


def fit_to_area(
    img: Image.Image, area: int, spatial_factor: int, max_aspect: float = DEFAULT_MAX_ASPECT,
    aspects: Sequence[float] = (),
) -> Image.Image:
    """Resize to about ``area`` pixels, aspect kept, both sides multiples of ``spatial_factor``.

    Aspect ratios beyond ``max_aspect`` : 1 are center-cropped to it first (see the module doc).
    ``aspects``: the width / height ratios a model was trained on (``BundleConfig.aspects``); the picture
    is then center-cropped to the nearest of them, since a model can fail on a grid shape it never saw.
    ``fit_box`` says which part of the image is kept, either way.
    """
    if spatial_factor < 1:
        raise ValueError("spatial_factor must be >= 1")
    if max_aspect < 1:
        raise ValueError("max_aspect must be >= 1")
    img = _center_crop_to_aspect(img, max_aspect)
    w, h = img.size
    tw, th = target_size(w, h, area, spatial_factor, max_aspect, aspects)
    if (w, h) == (tw, th):
        return img.copy()
    # Scale to cover (tw, th) with the aspect unchanged, then crop the < factor left-over pixels.
    s = max(tw / w, th / h)
    sw, sh = max(tw, round(w * s)), max(th, round(h * s))
    # reducing_gap: box-reduce big photos first, then Lanczos — same look, several times faster.
    resized = img.resize((sw, sh), Image.Resampling.LANCZOS, reducing_gap=3.0 if s < 1 / 3 else None)
    left, top = (sw - tw) // 2, (sh - th) // 2
    return resized.crop((left, top, left + tw, top + th))


def fit_box(
    width: int, height: int, target: tuple[int, int], max_aspect: float = DEFAULT_MAX_ASPECT
) -> tuple[float, float, float, float]:
    """The region (left, top, right, bottom) of a ``width``×``height`` image that ``fit_to_area`` keeps
    when it makes a ``target`` = (width, height) picture of it.

    In the image's own pixel coordinates (fractional: the crop happens after the resize), so a point of
    the fitted picture maps back onto the original: the full-resolution render (``engine.render``) needs
    to know which part of the photo the model saw.
    """
    x0 = y0 = 0.0
    w, h = width, height
    if w > h * max_aspect:
        nw = max(1, round(h * max_aspect))
        x0, w = float((w - nw) // 2), nw
    elif h > w * max_aspect:
        nh = max(1, round(w * max_aspect))
        y0, h = float((h - nh) // 2), nh
    tw, th = target
    if (w, h) == (tw, th):
        return x0, y0, x0 + w, y0 + h
    s = max(tw / w, th / h)
    sw, sh = max(tw, round(w * s)), max(th, round(h * s))
    left, top = (sw - tw) // 2, (sh - th) // 2
    fx, fy = w / sw, h / sh
    return x0 + left * fx, y0 + top * fy, x0 + (left + tw) * fx, y0 + (top + th) * fy


def prepare_image(
    src: ImageSource,
    area: int,
    spatial_factor: int,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    aspects: Sequence[float] = (),
) -> Image.Image:
    """``load_image`` then ``fit_to_area``: the picture the image tokenizer will encode."""
    im = load_image(src, max_bytes=max_bytes, max_pixels=max_pixels, _draft_area=area)
    return fit_to_area(im, area, spatial_factor, max_aspect, aspects)


def fit_to_bundle(bundle: Any, img: Image.Image) -> Image.Image:
    """``img`` as a bundle's model reads it (``fit_to_area`` with its area, cell size and photo shapes)."""
    return fit_to_area(img.convert("RGB"), bundle.config.image_area, bundle.vq.spatial_factor,
                       aspects=bundle_aspects(bundle))


def bundle_aspects(bundle: Any) -> tuple[float, ...]:
    """The photo shapes (width / height) a bundle's model was trained on; () for any shape."""
    return tuple(getattr(getattr(bundle, "config", None), "aspects", None) or ())
