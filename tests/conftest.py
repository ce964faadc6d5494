"""Shared, session-scoped test data for the PixMix tests.

Every image here is deterministic (fixed seeds, local numpy Generators only), so tests that use them
are reproducible and never touch a global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from pixmix.augment.transforms import to_uint8_tensor
from pixmix.demo import synthetic_images, synthetic_mixing_pictures


@dataclass(frozen=True)
class ImageSet:
    """The same pictures as PIL RGB images and as one uint8 ``[n, 3, H, W]`` tensor."""

    pils: list[Image.Image]
    tensor: torch.Tensor

    def __len__(self) -> int:
        return len(self.pils)


def image_set(pils: list[Image.Image]) -> ImageSet:
    return ImageSet(pils=list(pils), tensor=torch.stack([to_uint8_tensor(p) for p in pils]))


def noise_set(n: int, height: int, width: int, seed: int) -> ImageSet:
    data = np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)
    return image_set([Image.fromarray(a, mode="RGB") for a in data])


# --- photos-like images and fractal mixing pictures -----------------------------------------------


@pytest.fixture(scope="session")
def photos32() -> ImageSet:
    """400 synthetic 32 px photos (CIFAR-sized)."""
    return image_set(synthetic_images(400, 32, seed=10))


@pytest.fixture(scope="session")
def fractals32() -> ImageSet:
    """400 synthetic 32 px mixing pictures."""
    return image_set(synthetic_mixing_pictures(400, 32, seed=20))


@pytest.fixture(scope="session")
def photos224() -> ImageSet:
    """40 synthetic 224 px photos (ImageNet-sized)."""
    return image_set(synthetic_images(40, 224, seed=11))


@pytest.fixture(scope="session")
def fractals224() -> ImageSet:
    """40 synthetic 224 px mixing pictures."""
    return image_set(synthetic_mixing_pictures(40, 224, seed=21))


# --- uniform noise (the hardest case for exact arithmetic: every value and every edge occurs) ------


@pytest.fixture(scope="session")
def noise32() -> ImageSet:
    return noise_set(26, 32, 32, seed=1)


@pytest.fixture(scope="session")
def noise224() -> ImageSet:
    return noise_set(6, 224, 224, seed=2)
