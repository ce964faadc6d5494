"""The evaluation's image sources, as batches of ``uint8 [B, 3, S, S]`` tensors.

Arrays (CIFAR test set, -C, -C-Bar, -P, the synthetic OOD sets) are batched straight from their rows,
memory-mapped files included; image folders (ImageNet, folder OOD sets) are decoded by a DataLoader.
Nothing here is random.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pixmix.augment.transforms import CenterCrop, Resize, to_uint8_tensor
from pixmix.data.readers import load_npy
from pixmix.utils.errors import PixmixError
from pixmix.utils.runtime import limit_threads, usable_cpus


def subset(n: int, limit: int | None) -> np.ndarray:
    """Evenly spaced indices of at most ``limit`` of ``n`` items (deterministic; spans every class folder)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).astype(np.int64))


def fit(images: torch.Tensor, size: int) -> torch.Tensor:
    """``images [B, 3, H, W]`` resized (shorter side) and centre-cropped to ``size`` unless already that size."""
    if images.shape[-2:] == (size, size):
        return images
    out = CenterCrop(size).apply(Resize(size).apply(images, None), None)
    if not isinstance(out, torch.Tensor):  # the transforms keep the input's kind
        raise TypeError(f"Resize/CenterCrop turned a tensor into {type(out).__name__}")
    return out


def array_batches(array: np.ndarray, indices: np.ndarray, batch_size: int, size: int) -> Iterator[torch.Tensor]:
    """uint8 NHWC array rows (memory-mapped is fine: only a batch is read at a time)."""
    for start in range(0, len(indices), batch_size):
        rows = np.ascontiguousarray(array[indices[start:start + batch_size]])
        yield fit(torch.from_numpy(rows).permute(0, 3, 1, 2), size)


class PilImages(torch.utils.data.Dataset):
    """The ``indices`` of a sequence of PIL images (or ``(image, label)`` pairs), transformed, as uint8 tensors."""

    def __init__(self, images: Sequence[Any], indices: np.ndarray, transform: Callable[[Image.Image], Image.Image]):
        self.images, self.indices, self.transform = images, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.images[int(self.indices[i])]
        image = item[0] if isinstance(item, tuple) else item
        return to_uint8_tensor(self.transform(image))


def pil_batches(images: Sequence[Any], indices: np.ndarray, batch_size: int,
                transform: Callable[[Image.Image], Image.Image], workers: int) -> Iterator[torch.Tensor]:
    """Batches of :class:`PilImages`, decoded by ``workers`` processes (0: in this one), in order.

    Processes x threads stay within the usable CPUs: each worker runs one thread, and while they run this
    process keeps the rest (at least one).
    """
    # Nothing here is random; the generator only keeps the loader's base seed off the global RNG.
    loader = torch.utils.data.DataLoader(PilImages(images, indices, transform), batch_size=batch_size,
                                         shuffle=False, num_workers=workers, generator=torch.Generator(),
                                         worker_init_fn=one_thread if workers else None)
    threads = torch.get_num_threads()
    if workers:
        torch.set_num_threads(max(1, min(threads, usable_cpus() - workers)))
    try:
        yield from loader
    finally:
        torch.set_num_threads(threads)


def one_thread(_worker: int) -> None:
    """A decoding worker's ``worker_init_fn``: one torch and BLAS thread."""
    limit_threads(1)


class ResizeCrop:
    """Shorter side to ``resize``, then the centre ``size`` square (torchvision's Resize + CenterCrop)."""

    def __init__(self, size: int, resize: int) -> None:
        self.resize, self.crop = Resize(resize), CenterCrop(size)

    def __call__(self, image: Image.Image) -> Image.Image:
        return _pil(self.crop.apply(_pil(self.resize.apply(image, None)), None))


def _pil(image: Image.Image | torch.Tensor) -> Image.Image:
    if not isinstance(image, Image.Image):  # the transforms keep the input's kind
        raise TypeError(f"Resize/CenterCrop turned a PIL image into {type(image).__name__}")
    return image


@dataclass(frozen=True)
class Feeder:
    """How a suite's images reach a model of input ``size``: batches of ``batch_size``, folder images
    decoded by ``workers`` processes and resized and cropped as the suite's reference does."""

    size: int
    batch_size: int
    workers: int
    imagenet: bool

    def transform(self) -> ResizeCrop:
        """The folder images' transform.

        ImageNet (val, -C, -C-Bar, -R): Resize(256) + CenterCrop(224) scaled to the input size, as the
        references evaluate every set, ImageNet-C and -C-Bar included although they are stored cropped to
        224 (PixMix's ``evaluate_c``: the 224 px images are enlarged to 256 and cropped back).
        """
        resize = round(self.size * 256 / 224) if self.imagenet else self.size
        return ResizeCrop(self.size, resize)

    def batches(self, images: Any, indices: np.ndarray) -> Iterator[torch.Tensor]:
        """The ``indices`` of ``images`` (a uint8 NHWC array or a sequence of PIL images) in batches."""
        if isinstance(images, np.ndarray):
            return array_batches(images, indices, self.batch_size, self.size)
        return pil_batches(images, indices, self.batch_size, self.transform(), self.workers)


def stacked_severities(folder: Path, name: str, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """A -C / -C-Bar file: ``uint8 [5 * N, H, W, 3]`` severities one after the other, its labels (one per
    image) and N."""
    path = folder / f"{name}.npy"
    images = load_npy(path)
    shape = images.shape
    if images.dtype != np.uint8 or images.ndim != 4 or shape[-1] != 3 or shape[0] % 5 or not shape[0]:
        raise PixmixError(f"{path}: expected uint8 [5*N, H, W, 3], got {images.dtype} {list(shape)}")
    per = shape[0] // 5
    if labels.shape[0] not in (per, 5 * per):
        raise PixmixError(f"{folder / 'labels.npy'}: {labels.shape[0]} labels for {per} images per severity")
    return images, (np.tile(labels, 5) if labels.shape[0] == per else labels).astype(np.int64), per


__all__ = ["Feeder", "PilImages", "ResizeCrop", "array_batches", "fit", "pil_batches", "stacked_severities", "subset"]
