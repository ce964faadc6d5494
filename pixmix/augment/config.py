"""PixMix hyper-parameters, validated once."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

from pixmix.augment.ops import MAX_SEVERITY, MIN_LEVEL, resolve_ops
from pixmix.utils.errors import PixmixError

# What a mixing round's partner may be (the paper's Table 5 strategies): "both" is PixMix (the
# augmented image or the mixing picture, each with probability 1/2); "augmented" mixes with augmented
# inputs only (no mixing set); "mixing" mixes with the mixing picture only.
PARTNERS = ("both", "augmented", "mixing")


class PaperSettings(TypedDict):
    """The paper's PixMix hyper-parameters for one dataset (typed, so ``**settings`` is checked)."""

    k: int
    beta: float
    severity: float
    image_size: int


# The paper's PixMix hyper-parameters (spec section 4), one source for PixMix.cifar()/.imagenet() and the
# recipes of pixmix.augment.recipes (which add the transforms and the normalisation around them).
PAPER_CIFAR: PaperSettings = {"k": 4, "beta": 3.0, "severity": 3.0, "image_size": 32}
PAPER_IMAGENET: PaperSettings = {"k": 4, "beta": 4.0, "severity": 1.0, "image_size": 224}


@dataclass(frozen=True)
class PixMixConfig:
    """k mixing rounds at most, Beta parameter, op severity, op list (spec sections 1-3) and partners."""

    k: int = 4
    beta: float = 3.0
    severity: float = 3.0
    ops: tuple[str, ...] | str = "all"
    partners: str = "both"

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            raise PixmixError(f"k must be an integer >= 0, got {self.k!r}", param="k")
        if not _is_real(self.beta) or not self.beta > 0 or not math.isfinite(self.beta):
            raise PixmixError(f"beta must be a finite number > 0, got {self.beta!r}", param="beta")
        if not _is_real(self.severity) or not (MIN_LEVEL <= self.severity <= MAX_SEVERITY):
            raise PixmixError(f"severity must be a number in [{MIN_LEVEL}, {MAX_SEVERITY:g}], got {self.severity!r}",
                              param="severity")
        if self.partners not in PARTNERS:
            raise PixmixError(f"partners must be one of {PARTNERS}, got {self.partners!r}", param="partners")
        object.__setattr__(self, "ops", resolve_ops(self.ops))

    @property
    def op_names(self) -> tuple[str, ...]:
        assert isinstance(self.ops, tuple)
        return self.ops


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def make_config(k: int, beta: float, severity: float, ops: str | Sequence[str], partners: str = "both") -> PixMixConfig:
    """A :class:`PixMixConfig` from loose arguments (any sequence of op names)."""
    return PixMixConfig(k=k, beta=beta, severity=severity, ops=ops if isinstance(ops, str) else tuple(ops),
                        partners=partners)
