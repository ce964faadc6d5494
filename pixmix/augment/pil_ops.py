"""The base operations on PIL images, as the reference code applies them (spec section 1).

Each function takes an already-sampled ``level`` (and sign), so it is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image, ImageEnhance, ImageOps

from pixmix.augment import ops as O

BILINEAR = Image.Resampling.BILINEAR
AFFINE = Image.Transform.AFFINE


def _affine(image: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    # Output keeps the input's size; uncovered pixels are black (PIL's default fill).
    return image.transform(image.size, AFFINE, matrix, resample=BILINEAR)


def _signed(value: float, negate: bool) -> float:
    return -value if negate else value


def autocontrast(image: Image.Image, level: float, negate: bool) -> Image.Image:
    return ImageOps.autocontrast(image)


def equalize(image: Image.Image, level: float, negate: bool) -> Image.Image:
    return ImageOps.equalize(image)


def posterize(image: Image.Image, level: float, negate: bool) -> Image.Image:
    return ImageOps.posterize(image, int(O.posterize_bits(level)))


def rotate(image: Image.Image, level: float, negate: bool) -> Image.Image:
    return image.rotate(_signed(int(O.rotate_degrees(level)), negate), resample=BILINEAR)


def solarize(image: Image.Image, level: float, negate: bool) -> Image.Image:
    return ImageOps.solarize(image, int(O.solarize_threshold(level)))


def shear_x(image: Image.Image, level: float, negate: bool) -> Image.Image:
    return _affine(image, (1, _signed(O.shear_factor(level), negate), 0, 0, 1, 0))


def shear_y(image: Image.Image, level: float, negate: bool) -> Image.Image:
    return _affine(image, (1, 0, 0, _signed(O.shear_factor(level), negate), 1, 0))


def translate_x(image: Image.Image, level: float, negate: bool) -> Image.Image:
    pixels = _signed(int(O.translate_pixels(level, image.width)), negate)
    return _affine(image, (1, 0, pixels, 0, 1, 0))


def translate_y(image: Image.Image, level: float, negate: bool) -> Image.Image:
    pixels = _signed(int(O.translate_pixels(level, image.height)), negate)
    return _affine(image, (1, 0, 0, 0, 1, pixels))


def color(image: Image.Image, level: float, negate: bool) -> Image.Image:
    return ImageEnhance.Color(image).enhance(O.enhance_factor(level))


def contrast(image: Image.Image, level: float, negate: bool) -> Image.Image:
    return ImageEnhance.Contrast(image).enhance(O.enhance_factor(level))


def brightness(image: Image.Image, level: float, negate: bool) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(O.enhance_factor(level))


def sharpness(image: Image.Image, level: float, negate: bool) -> Image.Image:
    return ImageEnhance.Sharpness(image).enhance(O.enhance_factor(level))


PIL_OPS: dict[str, Callable[[Image.Image, float, bool], Image.Image]] = {
    name: globals()[name] for name in O.ALL_OPS
}


def apply_op(image: Image.Image, name: str, level: float, negate: bool) -> Image.Image:
    """Apply op ``name`` with magnitude ``level`` (and sign flip ``negate`` for signed ops)."""
    return PIL_OPS[name](image, level, negate)
