"""PixMix as a torchvision-style transform and as a dataset wrapper, plus a folder mixing set.

Randomness: the dataset wrapper gives every (epoch, index) its own generator derived from one seed,
so a sample is a pure function of (seed, epoch, index), whatever the number of DataLoader workers.
The bare transform, used without the wrapper, keeps one stream per worker process.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pixmix.augment.pixmix import PixMix
from pixmix.augment.recipes import Recipe, get_recipe
from pixmix.data.images import IMAGE_SUFFIXES, MAX_PIXELS, load_rgb, to_rgb
from pixmix.utils.errors import PixmixError
from pixmix.utils.seeding import derive_seed, generator_for


@dataclass(frozen=True)
class PixMixOptions:
    """What :class:`PixMixTransform` and :class:`PixMixDataset` share, validated once.

    ``recipe``: ``"cifar"``, ``"imagenet"`` or a :class:`Recipe` (its transforms and normalisation);
    ``seed``: the root of every random stream; ``normalize``: normalise with the recipe's mean and std;
    ``pixmix``: a :class:`PixMix` in place of the recipe's own.
    """

    recipe: str | Recipe = "cifar"
    seed: int = 0
    normalize: bool = True
    pixmix: PixMix | None = None

    def __post_init__(self) -> None:
        get_recipe(self.recipe)  # an unknown name fails here, naming the parameter
        # numbers.Integral: numpy integers are seeds too; bool is not (it is a bug).
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise PixmixError(f"seed must be an integer >= 0, got {self.seed!r}", param="seed")
        if self.pixmix is not None and not isinstance(self.pixmix, PixMix):
            raise PixmixError(f"pixmix must be a PixMix or None, got {type(self.pixmix).__name__}", param="pixmix")


def _picture(item: Any) -> Image.Image:
    """A mixing-set item (an image, or a tuple whose first element is one) as an RGB image."""
    image = item[0] if isinstance(item, (tuple, list)) else item
    if not isinstance(image, Image.Image):
        raise PixmixError(f"mixing set items must be PIL images or (image, ...) tuples, got {type(image).__name__}",
                          param="mixing_set")
    return to_rgb(image)  # 16-bit and float pictures scaled, not clipped


class PixMixTransform:
    """``transform(image) -> tensor``: base train transform, PixMix with a random mixing picture, normalise.

    ``mixing_set`` is any sequence of PIL images (or ``(image, ...)`` tuples, e.g. an ImageFolder).
    Pass ``generator`` to control randomness; without it each worker process uses its own stream,
    derived from ``seed`` and the worker id (distinct across workers, reproducible for a fixed
    number of workers). The other arguments are the fields of :class:`PixMixOptions`
    (or use :meth:`from_options`).
    """

    def __init__(
        self,
        mixing_set: Sequence[Any],
        recipe: str | Recipe = "cifar",
        seed: int = 0,
        normalize: bool = True,
        pixmix: PixMix | None = None,
    ) -> None:
        self._start(mixing_set, PixMixOptions(recipe, seed, normalize, pixmix))

    @classmethod
    def from_options(cls, mixing_set: Sequence[Any], options: PixMixOptions) -> PixMixTransform:
        """The transform of already validated options."""
        transform = cls.__new__(cls)
        transform._start(mixing_set, options)
        return transform

    def _start(self, mixing_set: Sequence[Any], options: PixMixOptions) -> None:
        if len(mixing_set) == 0:
            raise PixmixError("mixing_set is empty: PixMix needs at least one mixing picture", param="mixing_set")
        self.options = options
        self.mixing_set = mixing_set
        self.recipe = get_recipe(options.recipe)
        self.pixmix = options.pixmix if options.pixmix is not None else self.recipe.pixmix()
        self.train_transform = self.recipe.train_transform()
        self.mixing_transform = self.recipe.mixing_transform()
        self.seed = options.seed
        self.normalize = options.normalize
        self._streams: dict[int, torch.Generator] = {}

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        gen = generator if generator is not None else self._worker_stream()
        image = self.train_transform(to_rgb(image), gen)
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
        pictures = f"mixing_set={len(self.mixing_set)} pictures"
        return f"PixMixTransform(recipe={self.recipe.name!r}, {pictures}, {self.pixmix!r})"


class PixMixDataset(torch.utils.data.Dataset):
    """Wrap a dataset of ``(image, label)`` so each item is ``(pixmixed tensor, label)``.

    Sample ``i`` of epoch ``e`` uses its own generator derived from ``(seed, e, i)``: identical for
    any number of DataLoader workers, different across epochs. Call :meth:`set_epoch` before each
    epoch (with ``persistent_workers=True`` workers keep the epoch they started with). The other
    arguments are the fields of :class:`PixMixOptions` (or use :meth:`from_options`).
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
        self._start(dataset, mixing_set, PixMixOptions(recipe, seed, normalize, pixmix))

    @classmethod
    def from_options(cls, dataset: Sequence[tuple[Image.Image, Any]], mixing_set: Sequence[Any],
                     options: PixMixOptions) -> PixMixDataset:
        """The dataset of already validated options."""
        wrapped = cls.__new__(cls)
        wrapped._start(dataset, mixing_set, options)
        return wrapped

    def _start(self, dataset: Sequence[tuple[Image.Image, Any]], mixing_set: Sequence[Any],
               options: PixMixOptions) -> None:
        self.dataset = dataset
        self.transform = PixMixTransform.from_options(mixing_set, options)
        self.options = options
        self.seed = options.seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s random streams from now on."""
        if epoch < 0:
            raise PixmixError(f"epoch must be >= 0, got {epoch}", param="epoch")
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
            raise PixmixError(f"mixing set folder {self.root} does not exist or is not a folder", param="root")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise PixmixError(f"mixing set folder {self.root} holds no images ({suffixes})", param="root")
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Image.Image:  # type: ignore[override]
        return load_rgb(self.files[index], self.max_pixels)


__all__ = ["MixingFolder", "PixMixDataset", "PixMixOptions", "PixMixTransform", "derive_seed", "load_rgb"]
