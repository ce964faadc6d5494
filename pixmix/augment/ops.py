"""The PixMix/AugMix base operations: their names, lists and magnitude rules.

Pure Python, no torch: both augmentation paths (PIL per-image and batched torch) derive their op
parameters from a sampled ``level`` through the functions here, so the two paths cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pixmix.utils.errors import PixmixError

BASIC_OPS: tuple[str, ...] = (
    "autocontrast",
    "equalize",
    "posterize",
    "rotate",
    "solarize",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
# These four overlap with ImageNet-C corruptions, hence opt-in (spec section 1).
EXTRA_OPS: tuple[str, ...] = ("color", "contrast", "brightness", "sharpness")
ALL_OPS: tuple[str, ...] = BASIC_OPS + EXTRA_OPS

OP_LISTS: dict[str, tuple[str, ...]] = {"basic": BASIC_OPS, "all": ALL_OPS}

# Ops whose magnitude carries a random sign.
SIGNED_OPS = frozenset({"rotate", "shear_x", "shear_y", "translate_x", "translate_y"})
ENHANCE_OPS = frozenset(EXTRA_OPS)

MAX_SEVERITY = 10.0
MIN_LEVEL = 0.1


def resolve_ops(ops: str | Sequence[str]) -> tuple[str, ...]:
    """Turn ``"basic"``, ``"all"`` or a sequence of op names into a validated tuple of names."""
    if isinstance(ops, str):
        if ops not in OP_LISTS:
            raise PixmixError(f"ops must be 'basic', 'all' or a list of op names, got {ops!r}", param="ops")
        return OP_LISTS[ops]
    names = tuple(ops)
    if not names:
        raise PixmixError("ops must name at least one op, got an empty list", param="ops")
    unknown = [name for name in names if name not in ALL_OPS]
    if unknown:
        raise PixmixError(f"ops: unknown op name(s) {unknown}; known ops are {list(ALL_OPS)}", param="ops")
    return names


# The magnitude rules below take a Python float or a float64 tensor of levels (elementwise) and give
# identical numbers for both: the same IEEE operations in the same order, and ``// 1`` as the floor
# that the reference's int() is for these positive values. Integer-valued results stay floats (or
# float tensors); callers convert.


def int_parameter(level: Any, maxval: float) -> Any:
    """AugMix's integer magnitude ``int(level * maxval / 10)``, as a float."""
    return level * maxval / 10 // 1


def float_parameter(level: Any, maxval: float) -> Any:
    """AugMix's float magnitude: ``level * maxval / 10``."""
    return level * maxval / 10.0


def posterize_bits(level: Any) -> Any:
    return 4 - int_parameter(level, 4)


def rotate_degrees(level: Any) -> Any:
    return int_parameter(level, 30)


def solarize_threshold(level: Any) -> Any:
    return 256 - int_parameter(level, 256)


def shear_factor(level: Any) -> Any:
    return float_parameter(level, 0.3)


def translate_pixels(level: Any, side: int) -> Any:
    return int_parameter(level, side / 3)


def enhance_factor(level: Any) -> Any:
    return float_parameter(level, 1.8) + 0.1
