"""The paper's CIFAR and ImageNet recipes: PixMix hyper-parameters and the transforms around it.

Order (spec section 4): base train transform on the training image, the mixing-picture transform on
the mixing picture, PixMix, then normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pixmix.augment.config import PAPER_CIFAR, PAPER_IMAGENET
from pixmix.augment.pixmix import PixMix
from pixmix.augment.transforms import (
    CenterCrop,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    SeededCompose,
)
from pixmix.utils.errors import PixmixError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Recipe:
    """One training recipe. ``name`` is ``"cifar"`` or ``"imagenet"``."""

    name: str
    image_size: int
    k: int
    beta: float
    severity: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    ops: str = "all"
    partners: str = "both"  # see pixmix.augment.config.PARTNERS (the paper's Table 5 strategies)

    def pixmix(self) -> PixMix:
        return PixMix(k=self.k, beta=self.beta, severity=self.severity, ops=self.ops, image_size=self.image_size,
                      partners=self.partners)

    def train_transform(self) -> SeededCompose:
        """The base train transform, applied first, to the training image."""
        if self.name == "cifar":
            return SeededCompose([RandomHorizontalFlip(), RandomCrop(self.image_size, padding=4)])
        return SeededCompose([RandomResizedCrop(self.image_size), RandomHorizontalFlip()])

    def mixing_transform(self) -> SeededCompose:
        """The mixing picture's transform: shorter side resized, then a random crop (no flip)."""
        resize = 36 if self.name == "cifar" else 256
        return SeededCompose([Resize(resize), RandomCrop(self.image_size)])

    def test_transform(self) -> SeededCompose:
        """Deterministic evaluation transform (before to-tensor and normalisation)."""
        if self.name == "cifar":
            return SeededCompose([])
        return SeededCompose([Resize(256), CenterCrop(self.image_size)])

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise float images in [0, 1], ``[..., 3, H, W]``, with the recipe's mean and std."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(3, 1, 1)
        return (images - mean) / std


CIFAR = Recipe("cifar", **PAPER_CIFAR, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
IMAGENET = Recipe("imagenet", **PAPER_IMAGENET, mean=IMAGENET_MEAN, std=IMAGENET_STD)
RECIPES: dict[str, Recipe] = {r.name: r for r in (CIFAR, IMAGENET)}


def get_recipe(recipe: str | Recipe) -> Recipe:
    """The recipe named ``recipe`` (a :class:`Recipe` is returned as it is)."""
    if isinstance(recipe, Recipe):
        return recipe
    if recipe not in RECIPES:
        raise PixmixError(f"recipe must be one of {sorted(RECIPES)}, got {recipe!r}", param="recipe")
    return RECIPES[recipe]
