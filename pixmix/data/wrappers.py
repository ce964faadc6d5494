"""PixMix as a torchvision-style transform and as a dataset wrapper, plus a folder mixing set.

Randomness: the dataset wrapper gives every (epoch, index) its own generator derived from one seed,
so a sample is a pure function of (seed, epoch, index), whatever the number of DataLoader workers.
The bare transform, used without the wrapper, keeps one stream per worker process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pixmix.augment.pixmix import PixMix
from pixmix.data.images import IMAGE_SUFFIXES, MAX_PIXELS, load_rgb
from pixmix.augment.recipes import Recipe, get_recipe
from pixmix.utils.seeding import derive_seed, generator_for



def _picture(item: Any) -> Image.Image:
    """A mixing-set item (an image, or a tuple whose first element is one) as an RGB image."""
    image = item[0] if isinstance(item, (tuple, list)) else item
    if not isinstance(image, Image.Image):
        raise ValueError(f"mixing set items must be PIL images or (image, ...) tuples, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


class PixMixTransform:
    """``transform(image) -> tensor``: base train transform, PixMix with a random mixing picture, normalise.

    ``mixing_set`` is any sequence of PIL images (or ``(image, ...)`` tuples, e.g. an ImageFolder).
    Pass ``generator`` to control randomness; without it each worker process uses its own stream,
    derived from ``seed`` and the worker id (distinct across workers, reproducible for a fixed
    number of workers).
    """

    def __init__(
        self,
        mixing_set: Sequence[Any],
        recipe: str | Recipe = "cifar",
        seed: int = 0,
        normalize: bool = True,
        pixmix: PixMix | None = None,
    ) -> None:
        if len(mixing_set) == 0:
            raise ValueError("mixing_set is empty: PixMix needs at least one mixing picture")
        self.mixing_set = mixing_set
        self.recipe = get_recipe(recipe)
        self.pixmix = pixmix if pixmix is not None else self.recipe.pixmix()
        self.train_transform = self.recipe.train_transform()
        self.mixing_transform = self.recipe.mixing_transform()
        self.seed = seed
        self.normalize = normalize
        self._streams: dict[int, torch.Generator] = {}

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        gen = generator if generator is not None else self._worker_stream()
        image = self.train_transform(image if image.mode == "RGB" else image.convert("RGB"), gen)
        index = int(torch.randint(len(self.mixing_set), (1,), generator=gen))
        picture = self.mixing_transform(_picture(self.mixing_set[index]), gen)
        mixed = self.pixmix(image, picture, gen)
        return self.recipe.normalize(mixed) if self.normalize else mixed

    def _worker_stream(self) -> torch.Generator:
        info = torch.utils.data.get_worker_info()
        worker = info.id + 1 if info is not None else 0
        if worker not in self._streams:
            self._streams[worker] = generator_for(self.seed, 1 << 30, worker)
        return self._streams[worker]

    def __repr__(self) -> str:
        return f"PixMixTransform(recipe={self.recipe.name!r}, mixing_set={len(self.mixing_set)} pictures, {self.pixmix!r})"


class PixMixDataset(torch.utils.data.Dataset):
    """Wrap a dataset of ``(image, label)`` so each item is ``(pixmixed tensor, label)``.

    Sample ``i`` of epoch ``e`` uses its own generator derived from ``(seed, e, i)``: identical for
    any number of DataLoader workers, different across epochs. Call :meth:`set_epoch` before each
    epoch (with ``persistent_workers=True`` workers keep the epoch they started with).
    """

    def __init__(
        self,
        dataset: Sequence[tuple[Image.Image, Any]],
        mixing_set: Sequence[Any],
        recipe: str | Recipe = "cifar",
        seed: int = 0,
        normalize: bool = True,
        pixmix: PixMix | None = None,
    ) -> None:
        self.dataset = dataset
        self.transform = PixMixTransform(mixing_set, recipe, seed=seed, normalize=normalize, pixmix=pixmix)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image, label = self.dataset[index]
        return self.transform(image, generator_for(self.seed, self.epoch, index)), label


class MixingFolder(Sequence[Image.Image]):
    """Every image file under ``root`` (recursively, sorted), loaded as RGB on access."""

    def __init__(self, root: str | Path, max_pixels: int = MAX_PIXELS) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"mixing set folder {self.root} does not exist or is not a folder")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise ValueError(f"mixing set folder {self.root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Image.Image:  # type: ignore[override]
        return load_rgb(self.files[index], self.max_pixels)


__all__ = ["PixMixTransform", "PixMixDataset", "MixingFolder", "load_rgb", "derive_seed"]
