"""Out-of-distribution sets for the anomaly-detection metric (spec section 7).

Synthetic sets are drawn from a seed with a numpy Generator, in [0, 1] pixel space as in the PixMix /
Outlier Exposure test code (hendrycks/outlier-exposure, the PixMix evaluation), then stored as
``uint8 [N, H, W, 3]``:

- Gaussian noise: N(0.5, 0.25) per value, clipped to [0, 1] (see GAUSSIAN_STD);
- Rademacher noise: each value 0 or 1 with probability 1/2 (in the normalised space of the CIFAR
  recipe, mean = std = 0.5, that is -1 or +1);
- Blobs: Bernoulli(0.7) per value, a Gaussian blur of sigma 1.5 over height, width *and* channels
  (the reference blurs the HxWx3 array as a volume), values under 0.75 set to 0. Drawn at the reference's
  32 px and scaled up for larger inputs: a blur scaled with the image would average the noise away.

Folder sets (Textures, SVHN, LSUN, Places69; for Places365 in-distribution, Table 13: Textures, SVHN,
ImageNet, Places69) are images anywhere under ``<data>/ood/<name>/``, shorter
side resized to the input size then centre-cropped, as the reference's ``Resize(32), CenterCrop(32)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pixmix.data.images import IMAGE_SUFFIXES, load_rgb
from pixmix.utils.errors import PixmixError
from pixmix.utils.seeding import derive_seed

SYNTHETIC_SETS = ("gaussian", "rademacher", "blobs")
# Folder under <data>/ood/ -> the name the paper uses (CIFAR and ImageNet suites).
FOLDER_SETS = {"textures": "Textures", "svhn": "SVHN", "lsun": "LSUN", "places": "Places69"}
# Table 13 (Places365 in-distribution): ImageNet instead of LSUN.
PLACES365_FOLDER_SETS = {"textures": "Textures", "svhn": "SVHN", "imagenet": "ImageNet", "places": "Places69"}
BLOB_BASE_SIZE = 32


def _rng(seed: int, name: str) -> np.random.Generator:
    # One independent stream per set, so adding a set never changes another's images.
    return np.random.default_rng(derive_seed(seed, 0x00D, SYNTHETIC_SETS.index(name)))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


CHUNK = 256  # images drawn per call: bounds the float64 scratch memory at ImageNet sizes


# The PixMix/AugMix evaluation code draws N(0, 0.5) clipped to [-1, 1] in the model's input space, where
# CIFAR is normalised with mean = std = 0.5: in pixels that is N(0.5, 0.25) clipped to [0, 1]. (Outlier
# Exposure's original script used N(0.5, 0.5) in pixels, a noisier set.)
GAUSSIAN_STD = 0.25


def gaussian_noise(count: int, size: int, seed: int) -> np.ndarray:
    """``count`` images of N(0.5, 0.25) noise clipped to [0, 1], ``uint8 [count, size, size, 3]``."""
    _check(count, size)
    rng, out = _rng(seed, "gaussian"), np.empty((count, size, size, 3), np.uint8)
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        out[start:start + n] = _to_uint8(np.clip(rng.normal(0.5, GAUSSIAN_STD, (n, size, size, 3)), 0, 1))
    return out


def rademacher_noise(count: int, size: int, seed: int) -> np.ndarray:
    """``count`` images whose values are 0 or 255 with equal probability."""
    _check(count, size)
    return (_rng(seed, "rademacher").integers(0, 2, (count, size, size, 3), dtype=np.uint8) * 255).astype(np.uint8)


def blobs(count: int, size: int, seed: int) -> np.ndarray:
    """``count`` blob images: thresholded blurred Bernoulli(0.7) noise (0, or at least 0.75 * 255)."""
    from scipy.ndimage import gaussian_filter

    _check(count, size)
    base = _rng(seed, "blobs").binomial(1, 0.7, (count, BLOB_BASE_SIZE, BLOB_BASE_SIZE, 3)).astype(np.float64)
    # skimage.filters.gaussian(x, 1.5, multichannel=False) on HxWx3: scipy's filter, mode "nearest",
    # truncate 4, over all three axes of each image (none across images).
    out = gaussian_filter(base, sigma=(0, 1.5, 1.5, 1.5), mode="nearest", truncate=4.0)
    out[out < 0.75] = 0.0
    images = _to_uint8(out)
    if size == BLOB_BASE_SIZE:
        return images
    # Nearest keeps the blobs' hard edges and the two-level histogram of the reference.
    rows = (np.arange(size) * BLOB_BASE_SIZE) // size
    return np.ascontiguousarray(images[:, rows][:, :, rows])


SYNTHETIC = {"gaussian": gaussian_noise, "rademacher": rademacher_noise, "blobs": blobs}


def synthetic_set(name: str, count: int, size: int, seed: int) -> np.ndarray:
    """One of :data:`SYNTHETIC_SETS` as ``uint8 [count, size, size, 3]``; the same for the same seed."""
    if name not in SYNTHETIC:
        raise PixmixError(f"synthetic OOD set must be one of {', '.join(SYNTHETIC_SETS)}, got {name!r}",
                          param="name")
    return SYNTHETIC[name](count, size, seed)


def _check(count: int, size: int) -> None:
    if count < 1 or size < 1:
        raise ValueError(f"OOD sets need count >= 1 and size >= 1, got {count}, {size}")


class ImageFiles(Sequence[Image.Image]):
    """Every image file under ``root`` (recursively, sorted), optionally a seeded subset of ``limit``."""

    def __init__(self, root: str | Path, limit: int | None = None, seed: int = 0) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise PixmixError(f"{self.root} not found: expected a folder of OOD images")
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise PixmixError(f"{self.root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if limit is not None and limit < len(files):
            # The reference takes the first batches of a shuffled loader: a uniform subset, here from the seed.
            rng = np.random.default_rng(derive_seed(seed, 0x00D, 100))
            files = [files[i] for i in np.sort(rng.choice(len(files), size=limit, replace=False))]
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Image.Image:  # type: ignore[override]
        return load_rgb(self.files[index])


def folder_sets(data_dir: str | Path, sets: Mapping[str, str] | None = None) -> tuple[dict[str, Path], list[str]]:
    """The folder OOD sets present under ``<data_dir>/ood/`` (``sets``: folder -> paper name, default
    :data:`FOLDER_SETS`), and a note for each one missing."""
    found, notes = {}, []
    for key, paper_name in (FOLDER_SETS if sets is None else sets).items():
        path = Path(data_dir) / "ood" / key
        if path.is_dir():
            found[key] = path
        else:
            notes.append(f"skipped: {path} not found (anomaly set {paper_name})")
    return found, notes


__all__ = ["BLOB_BASE_SIZE", "FOLDER_SETS", "PLACES365_FOLDER_SETS", "SYNTHETIC_SETS", "ImageFiles", "blobs",
           "folder_sets", "gaussian_noise", "rademacher_noise", "synthetic_set"]
