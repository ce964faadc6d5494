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


def resize_shorter(image: Image.Image, side: int) -> Image.Image:
    """``image`` with its shorter side ``side`` (aspect kept, bicubic); unchanged when already that size."""
    w, h = image.size
    scale = side / min(w, h)
    if scale == 1.0:
        return image
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)


def load_rgb(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An image file as RGB (greyscale, CMYK, palette and alpha converted), checked by :func:`open_image`."""
    with open_image(path, max_pixels=max_pixels) as im:
        return im.convert("RGB")


__all__ = ["DEFAULT_IMAGE_FORMATS", "IMAGE_SUFFIXES", "MAX_PIXELS", "ImageError", "check_image", "load_rgb",
           "open_image", "resize_shorter"]
