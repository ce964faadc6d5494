"""Image transforms whose randomness comes only from an explicit ``torch.Generator``.

Each transform splits *sampling* random parameters (``sample``) from *applying* them
(``apply``), so a data pipeline can log, replay or share the parameters and two workers
given equally seeded generators produce identical images regardless of any global RNG.
Applying is done with ``torchvision.transforms.v2.functional`` kernels, so PIL images and
``[..., C, H, W]`` tensors both work.

With a CPU generator seeded like the global RNG, the random transforms draw exactly the
same numbers in the same order as their ``torchvision.transforms.v2`` counterparts, so
their parameters (and outputs) match torchvision's bit for bit.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode

from pixmix.utils.errors import PixmixError

__all__ = [
    "CenterCrop",
    "CropParams",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "SeededCompose",
    "SeededTransform",
    "to_uint8_tensor",
]

ImageLike = Image.Image | torch.Tensor
Size = tuple[int, int]  # (height, width), the order torchvision's get_size uses


@dataclass(frozen=True)
class CropParams:
    """A crop window in the coordinates of the image it is cut from."""

    top: int
    left: int
    height: int
    width: int


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """Convert a PIL RGB image to a uint8 tensor of shape [3, H, W]."""
    if not isinstance(image, Image.Image):
        raise PixmixError(f"to_uint8_tensor: image must be a PIL image, got {type(image).__name__}", param="image")
    if image.mode != "RGB":
        raise PixmixError(f"to_uint8_tensor: image mode must be 'RGB', got {image.mode!r}", param="image")
    return F.pil_to_tensor(image)


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but RandomCrop(True) is always a bug.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_size(owner: str, size: Any) -> Size:
    """Normalise ``int | (h, w)`` to a ``(h, w)`` tuple of positive ints."""
    if _is_int(size):
        size = (size, size)
    if not (isinstance(size, Sequence) and len(size) == 2 and all(_is_int(s) for s in size)):
        raise PixmixError(f"{owner}: size must be an int or a (height, width) pair of ints, got {size!r}", param="size")
    if min(size) <= 0:
        shown = size[0] if size[0] == size[1] else tuple(size)
        raise PixmixError(f"{owner}: size must be positive, got {shown}", param="size")
    return (size[0], size[1])


def _check_range(owner: str, name: str, value: Any) -> tuple[float, float]:
    if not (isinstance(value, Sequence) and len(value) == 2 and all(_is_number(v) for v in value)):
        raise PixmixError(f"{owner}: {name} must be a (min, max) pair of numbers, got {value!r}", param=name)
    lo, hi = float(value[0]), float(value[1])
    if not 0 < lo <= hi:
        raise PixmixError(f"{owner}: {name} must satisfy 0 < min <= max, got {tuple(value)}", param=name)
    return lo, hi


def _check_interpolation(owner: str, interpolation: Any) -> InterpolationMode:
    if not isinstance(interpolation, InterpolationMode):
        raise PixmixError(f"{owner}: interpolation must be an InterpolationMode, got {interpolation!r}",
                          param="interpolation")
    return interpolation


def _check_generator(owner: str, generator: Any) -> torch.Generator:
    # A seed int passed where a generator belongs would otherwise fail deep inside torch.
    if not isinstance(generator, torch.Generator):
        raise PixmixError(f"{owner}: generator must be a torch.Generator, got {type(generator).__name__}",
                          param="generator")
    if generator.device.type != "cpu":
        raise PixmixError(f"{owner}: generator must be a CPU torch.Generator, got device {generator.device}",
                          param="generator")
    return generator


class SeededTransform(abc.ABC):
    """A transform whose random parameters are sampled from an explicit generator."""

    def sample(self, size: Size, generator: torch.Generator) -> Any:
        """Draw parameters for an input of ``size`` = (H, W); deterministic transforms return None."""
        return None

    @abc.abstractmethod
    def apply(self, image: ImageLike, params: Any) -> ImageLike:
        """Apply previously sampled ``params``; pure and deterministic."""

    @abc.abstractmethod
    def output_size(self, size: Size, params: Any) -> Size:
        """(H, W) of the output for an input of ``size`` and these ``params``."""

    # The kernels keep the image type: a PIL image stays one, a tensor stays one.
    @overload
    def __call__(self, image: Image.Image, generator: torch.Generator) -> Image.Image: ...

    @overload
    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...

    def __call__(self, image: ImageLike, generator: torch.Generator) -> ImageLike:
        size = F.get_size(image)
        return self.apply(image, self.sample((size[0], size[1]), generator))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class RandomHorizontalFlip(SeededTransform):
    """Flip left-right with probability ``p``; params is whether to flip."""

    def __init__(self, p: float = 0.5) -> None:
        if not (_is_number(p) and 0.0 <= p <= 1.0):
            raise PixmixError(f"RandomHorizontalFlip: p must be a number in [0, 1], got {p!r}", param="p")
        self.p = float(p)

    def sample(self, size: Size, generator: torch.Generator) -> bool:
        _check_generator("RandomHorizontalFlip", generator)
        # One draw every call, even for p in {0, 1}, so the generator stream does not depend on p.
        return bool(torch.rand(1, generator=generator).item() < self.p)

    def apply(self, image: ImageLike, params: bool) -> ImageLike:
        return F.horizontal_flip(image) if params else image

    def output_size(self, size: Size, params: bool) -> Size:
        return size


class RandomCrop(SeededTransform):
    """Pad every side by ``padding`` with ``fill``, then take a uniformly random ``size`` crop.

    Matches ``torchvision.transforms.v2.RandomCrop(size, padding=padding, fill=fill)``;
    params are the crop window in padded coordinates.
    """

    def __init__(self, size: int | Size, padding: int = 0, fill: int = 0) -> None:
        self.size = _check_size("RandomCrop", size)
        if not (_is_int(padding) and padding >= 0):
            raise PixmixError(f"RandomCrop: padding must be a non-negative int, got {padding!r}", param="padding")
        if not _is_int(fill):
            raise PixmixError(f"RandomCrop: fill must be an int, got {fill!r}", param="fill")
        self.padding = padding
        self.fill = fill

    def sample(self, size: Size, generator: torch.Generator) -> CropParams:
        _check_generator("RandomCrop", generator)
        padded_h, padded_w = size[0] + 2 * self.padding, size[1] + 2 * self.padding
        crop_h, crop_w = self.size
        if padded_h < crop_h or padded_w < crop_w:
            raise PixmixError(
                f"RandomCrop: size {self.size} is larger than the input {tuple(size)} "
                f"padded by {self.padding} = {(padded_h, padded_w)}",
                param="size",
            )
        # Draw only for axes with slack, in torchvision's order (top, then left), to stay in step with it.
        top = int(torch.randint(0, padded_h - crop_h + 1, size=(), generator=generator)) if padded_h > crop_h else 0
        left = int(torch.randint(0, padded_w - crop_w + 1, size=(), generator=generator)) if padded_w > crop_w else 0
        return CropParams(top, left, crop_h, crop_w)

    def apply(self, image: ImageLike, params: CropParams) -> ImageLike:
        if self.padding:
            image = F.pad(image, [self.padding], fill=self.fill)
        return F.crop(image, params.top, params.left, params.height, params.width)

    def output_size(self, size: Size, params: CropParams) -> Size:
        return (params.height, params.width)


class RandomResizedCrop(SeededTransform):
    """Crop a random area/aspect-ratio window and resize it to ``size``.

    Sampling follows ``torchvision.transforms.RandomResizedCrop.get_params``: up to 10
    tries of (uniform area fraction in ``scale``, log-uniform aspect ratio in ``ratio``),
    then a central crop clamped to ``ratio`` if none fits.
    """

    def __init__(
        self,
        size: int | Size,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        interpolation: InterpolationMode = InterpolationMode.BILINEAR,
        antialias: bool = True,
    ) -> None:
        self.size = _check_size("RandomResizedCrop", size)
        self.scale = _check_range("RandomResizedCrop", "scale", scale)
        self.ratio = _check_range("RandomResizedCrop", "ratio", ratio)
        self.interpolation = _check_interpolation("RandomResizedCrop", interpolation)
        if not isinstance(antialias, bool):
            raise PixmixError(f"RandomResizedCrop: antialias must be a bool, got {antialias!r}", param="antialias")
        self.antialias = antialias

    def sample(self, size: Size, generator: torch.Generator) -> CropParams:
        _check_generator("RandomResizedCrop", generator)
        height, width = size
        area = height * width
        # float32 log bounds and float32 uniform draws, as torchvision does, so the streams agree.
        log_lo, log_hi = torch.log(torch.tensor(self.ratio)).tolist()
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=generator).item()
            aspect_ratio = torch.exp(torch.empty(1).uniform_(log_lo, log_hi, generator=generator)).item()
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
                left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
                return CropParams(top, left, h, w)

        # No try fit: take the largest central crop whose aspect ratio is within `ratio`.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        return CropParams((height - h) // 2, (width - w) // 2, h, w)

    def apply(self, image: ImageLike, params: CropParams) -> ImageLike:
        return F.resized_crop(
            image,
            params.top,
            params.left,
            params.height,
            params.width,
            size=list(self.size),
            interpolation=self.interpolation,
            antialias=self.antialias,
        )

    def output_size(self, size: Size, params: CropParams) -> Size:
        return self.size


class Resize(SeededTransform):
    """Resize so the shorter side equals ``size``, keeping the aspect ratio (like ``Resize(int)``)."""

    def __init__(
        self,
        size: int,
        interpolation: InterpolationMode = InterpolationMode.BILINEAR,
        antialias: bool = True,
    ) -> None:
        if not _is_int(size):
            raise PixmixError(f"Resize: size must be an int (the shorter side), got {size!r}", param="size")
        if size <= 0:
            raise PixmixError(f"Resize: size must be positive, got {size}", param="size")
        self.size = size
        self.interpolation = _check_interpolation("Resize", interpolation)
        if not isinstance(antialias, bool):
            raise PixmixError(f"Resize: antialias must be a bool, got {antialias!r}", param="antialias")
        self.antialias = antialias

    def apply(self, image: ImageLike, params: None) -> ImageLike:
        return F.resize(image, [self.size], interpolation=self.interpolation, antialias=self.antialias)

    def output_size(self, size: Size, params: None) -> Size:
        # torchvision truncates (not rounds) the longer side: int(size * long / short).
        h, w = size
        if h <= w:
            return (self.size, int(self.size * w / h))
        return (int(self.size * h / w), self.size)


class CenterCrop(SeededTransform):
    """Crop the centre ``size`` window (zero-padded by torchvision if the input is smaller)."""

    def __init__(self, size: int | Size) -> None:
        self.size = _check_size("CenterCrop", size)

    def apply(self, image: ImageLike, params: None) -> ImageLike:
        return F.center_crop(image, list(self.size))

    def output_size(self, size: Size, params: None) -> Size:
        return self.size


class SeededCompose(SeededTransform):
    """Chain transforms; params is a tuple with one entry per child, in order."""

    def __init__(self, transforms: Sequence[SeededTransform]) -> None:
        if isinstance(transforms, (str, bytes)) or not isinstance(transforms, Sequence):
            raise PixmixError(f"SeededCompose: transforms must be a sequence, got {type(transforms).__name__}",
                              param="transforms")
        for i, t in enumerate(transforms):
            if not isinstance(t, SeededTransform):
                raise PixmixError(f"SeededCompose: transforms[{i}] must be a SeededTransform, got {t!r}",
                                  param="transforms")
        self.transforms = list(transforms)

    def sample(self, size: Size, generator: torch.Generator) -> tuple[Any, ...]:
        _check_generator("SeededCompose", generator)
        params = []
        for t in self.transforms:
            # Each child must see the size its input will actually have, e.g. a crop after a resize.
            p = t.sample(size, generator)
            params.append(p)
            size = t.output_size(size, p)
        return tuple(params)

    def apply(self, image: ImageLike, params: tuple[Any, ...]) -> ImageLike:
        if not (isinstance(params, tuple) and len(params) == len(self.transforms)):
            raise PixmixError(
                f"SeededCompose: params must be a tuple of {len(self.transforms)} entries, got {params!r}",
                param="params",
            )
        for t, p in zip(self.transforms, params):
            image = t.apply(image, p)
        return image

    def output_size(self, size: Size, params: tuple[Any, ...]) -> Size:
        for t, p in zip(self.transforms, params):
            size = t.output_size(size, p)
        return size
