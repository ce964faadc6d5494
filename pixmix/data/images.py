"""Opening untrusted image files: formats allow-listed, decompression bombs refused from the header
before a pixel is decoded, then a full decode so truncated and corrupt files are refused too.

Every loader of the project goes through :func:`open_image` (``load_rgb``, the dataset
readers, ``mixset build`` and ``mixset shard``).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from pixmix.utils.errors import PixmixError

#: Formats accepted by default: plain raster formats whose decoders run in-process (no EPS/PostScript,
#: which would hand untrusted input to Ghostscript).
DEFAULT_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
#: File name suffixes taken as images when listing folders.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
#: Images are used at a few hundred pixels; anything this large is refused as a likely decompression bomb.
MAX_PIXELS = 64_000_000


class ImageError(PixmixError):
    """An image was refused (not an image, corrupt, unsupported format or too many pixels); one line."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(" ".join(str(message).split()), param=param)


ImageSource = str | os.PathLike | bytes | bytearray | memoryview


def check_image(
    path_or_bytes: ImageSource,
    *,
    max_pixels: int = MAX_PIXELS,
    formats: Iterable[str] | None = DEFAULT_IMAGE_FORMATS,
    name: str | None = None,
) -> tuple[int, int, str]:
    """``(width, height, format)`` of an image file or its bytes, or :class:`ImageError` (one line).

    See :func:`open_image`, which does the checking and also hands back the decoded image.
    """
    with open_image(path_or_bytes, max_pixels=max_pixels, formats=formats, name=name) as im:
        return im.width, im.height, im.format or "unknown"


def open_image(
    path_or_bytes: ImageSource,
    *,
    max_pixels: int = MAX_PIXELS,
    formats: Iterable[str] | None = DEFAULT_IMAGE_FORMATS,
    name: str | None = None,
    min_side: int | None = None,
    decode: bool = True,
) -> Image.Image:
    """The decoded image of a file or its bytes (close it when done), or :class:`ImageError` (one line).

    ``decode=False``: only the header checks below; the image comes back opened but not decoded (for a
    caller that decodes the bytes with another library).

    ``min_side``: the caller will shrink the image to this shorter side, so a JPEG may be decoded at
    a reduced DCT scale (Pillow's draft mode) that keeps the shorter side at least that large.

    The header is read first and width x height is compared with ``max_pixels`` before any pixel is
    decoded; Pillow's own ``DecompressionBombError`` (raised while parsing headers above twice
    ``Image.MAX_IMAGE_PIXELS``) is reported the same way, and its ``DecompressionBombWarning`` is
    swallowed in favour of the ``max_pixels`` check. Then the image is decoded fully, so truncated and
    corrupt files are refused too. ``formats`` limits which Pillow plugins may open it (None: all);
    ``name`` labels bytes input in messages.
    """
    label, source = _source(path_or_bytes, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = _open_header(source, label, formats, max_pixels)
        try:
            _check_pixels(im, label, max_pixels)
            if decode:
                _decode(im, label, max_pixels, min_side)
        except BaseException:
            im.close()
            raise
    return im


def _source(path_or_bytes: ImageSource, name: str | None) -> tuple[str, io.BytesIO | Path]:
    """The label messages use, and what Pillow opens: the bytes as a stream, or the path."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return name or f"<{len(path_or_bytes)} bytes>", io.BytesIO(bytes(path_or_bytes))
    return name or str(path_or_bytes), Path(path_or_bytes)


def _bomb(label: str, max_pixels: int, w: int | None = None, h: int | None = None, detail: str = "") -> ImageError:
    dims = f"{w}x{h} = {w * h} pixels" if w is not None and h is not None else f"too many pixels ({detail})"
    return ImageError(
        f"image {label} refused as a possible decompression bomb: {dims}, over the limit of "
        f"{max_pixels} (checked from the header, nothing decoded)"
    )


def _open_header(source: io.BytesIO | Path, label: str, formats: Iterable[str] | None, max_pixels: int) -> Image.Image:
    """``Image.open`` (the header only) with only the allowed plugins; each failure as a one-line ImageError."""
    allowed = None if formats is None else [f.upper() for f in formats]
    try:
        return Image.open(source, formats=allowed)
    except Image.DecompressionBombError as exc:
        raise _bomb(label, max_pixels, detail=f"Pillow: {exc}") from None
    except FileNotFoundError:
        raise ImageError(f"image {label} does not exist") from None
    except IsADirectoryError:
        raise ImageError(f"image {label} is a folder, not a file") from None
    except Image.UnidentifiedImageError:
        allowed_txt = ", ".join(allowed) if allowed else "any Pillow format"
        raise ImageError(f"{label} is not an image in an accepted format ({allowed_txt})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"image {label} has an unreadable header ({type(exc).__name__}: {exc})") from None


def _check_pixels(im: Image.Image, label: str, max_pixels: int) -> None:
    """Refuse an empty image, or one with more than ``max_pixels`` pixels, from its header."""
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image {label} has an invalid size {width}x{height}")
    if width * height > max_pixels:
        raise _bomb(label, max_pixels, width, height)


def _decode(im: Image.Image, label: str, max_pixels: int, min_side: int | None) -> None:
    """Decode every pixel (at a reduced JPEG scale when ``min_side`` allows), so corrupt files are refused."""
    width, height = im.size
    fmt = im.format or "unknown"
    if min_side is not None and fmt == "JPEG" and min(width, height) >= 2 * min_side:
        scale = min_side / min(width, height)
        im.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    try:
        im.load()
    except Image.DecompressionBombError:
        raise _bomb(label, max_pixels, width, height) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise ImageError(
            f"image {label} ({fmt} {width}x{height}) is corrupt or truncated ({type(exc).__name__}: {exc})"
        ) from None


#: Longest side over shorter side accepted by :func:`resize_shorter`: a 1x8000 strip would become 256x2048000.
MAX_ASPECT = 64


def resize_shorter(image: Image.Image, side: int, *, name: str | None = None,
                   max_pixels: int = MAX_PIXELS) -> Image.Image:
    """``image`` with its shorter side ``side`` (aspect kept, bicubic); unchanged when already that size.

    Checked before resizing, from the size alone: an aspect ratio over ``1:MAX_ASPECT`` or a result
    over ``max_pixels`` is refused with a one-line :class:`ImageError` naming ``name`` (a few hundred bytes of
    PNG can hold a 1x30000 strip, whose resized copy would take gigabytes). Such images are refused, not
    cropped: a strip cropped to a square keeps little of what it showed.
    """
    w, h = image.size
    label = name or getattr(image, "filename", "") or f"<{w}x{h} image>"
    if w <= 0 or h <= 0:
        raise ImageError(f"image {label} has an invalid size {w}x{h}")
    scale = side / min(w, h)
    if scale == 1.0:
        return image
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if max(w, h) > MAX_ASPECT * min(w, h) or new_w * new_h > max_pixels:
        raise ImageError(
            f"image {label} is {w}x{h}: resizing its shorter side to {side} would make {new_w}x{new_h} = "
            f"{new_w * new_h} pixels (aspect ratio limit 1:{MAX_ASPECT}, pixel limit {max_pixels}); "
            "crop it to a less extreme shape or leave it out"
        )
    return image.resize((new_w, new_h), Image.Resampling.BICUBIC)


# High-bit-depth and float modes, scaled by to_rgb rather than clipped by Pillow's convert.
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, every mode scaled (never clipped) to 0..255.

    * ``I;16`` / ``I;16B`` (16-bit greyscale, little or big endian) and ``I`` (32-bit integer, which
      is how 16-bit PNG and TIFF samples arrive) are taken on the 16-bit scale: 0..65535 becomes
      0..255 (the high byte, ``v >> 8``, as an 8-bit encoder would keep); ``I`` values outside
      0..65535 are clamped.
    * ``F`` (32-bit float): 0.0..1.0 is the usual float scale; an image whose values exceed 1.0 is
      taken on the 0..255 scale. Rounded, clamped.
    * Alpha (``LA``, ``RGBA``, ``PA``, ``P`` with a transparent colour) is dropped, never composited:
      every pixel keeps its stored colour (what torchvision's RGB decode did), in every mode alike.
    * ``CMYK`` (Adobe-inverted JPEGs are un-inverted by Pillow) and the rest: Pillow's conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_MODES:
        values = np.asarray(image)
        if image.mode == "F":
            top = 1.0 if values.size == 0 or float(np.nanmax(values)) <= 1.0 else 255.0
            grey = np.clip(np.rint(np.nan_to_num(values.astype(np.float64)) * (255.0 / top)), 0, 255)
        else:
            grey = np.clip(values.astype(np.int64), 0, 65535) >> 8
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the palette's colours; the transparency is dropped below
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An image file as 8-bit RGB (every mode scaled by :func:`to_rgb`), checked by :func:`open_image`."""
    with open_image(path, max_pixels=max_pixels) as im:
        return to_rgb(im)


__all__ = ["DEFAULT_IMAGE_FORMATS", "IMAGE_SUFFIXES", "MAX_ASPECT", "MAX_PIXELS", "ImageError", "check_image",
           "load_rgb", "open_image", "resize_shorter", "to_rgb"]
