"""Readers for the datasets in their usual on-disk formats: CIFAR python batches, CIFAR-10/100-C
``.npy`` files, ImageNet-style class folders and Outlier Exposure's ``300K_random_images.npy``.

All are random-access sequences of ``(PIL RGB image, label)``; the CIFAR ones also expose the raw
``uint8 [N, 32, 32, 3]`` array. Input is treated as untrusted: the CIFAR pickles are read with an
unpickler that only rebuilds dicts, lists, strings, bytes, numbers and numpy arrays (a pickle can
otherwise run code), and image files go through the decompression-bomb check of
:func:`pixmix.data.images.load_rgb`.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pixmix.data.benchmarks import CORRUPTIONS
from pixmix.data.images import IMAGE_SUFFIXES, load_rgb
from pixmix.utils.errors import PixmixError
from pixmix.utils.seeding import derive_seed

CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}
CORRUPTED_LAYOUT = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C"}
PER_SEVERITY = 10_000

# The only globals a CIFAR pickle may name: what numpy needs to rebuild an array. The ones that could be
# asked for a huge allocation (ndarray, _reconstruct, bytes) are replaced by the checked stand-ins below.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("builtins", "bytes"), ("_codecs", "encode"),
}
#: A dataset pickle larger than this is refused before it is read (CIFAR-100's train batch is ~160 MB).
MAX_PICKLE_BYTES = 1 << 30
# Opcodes whose argument indexes the unpickler's memo, which it grows to that index.
_MEMO_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})


class _Refused(pickle.UnpicklingError):
    """The pickle asks for something a dataset pickle never needs (an allocation beyond its own size)."""


class _ArrayType:
    """Stands in for ``numpy.ndarray``: only the subtype argument of ``_reconstruct``, never called."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _ArrayType:
        raise _Refused("numpy.ndarray(...) is called directly (it would allocate the array it names)")


class _PendingArray:
    """What ``_reconstruct`` makes: the array is built in ``__setstate__`` (the BUILD opcode) only once its
    shape, dtype and data agree, so its size is the size of bytes already in the pickle."""

    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("an array state that is not numpy's (version, shape, dtype, fortran, data)")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise _Refused(f"an array shape {str(shape)[:60]} that is not a tuple of sizes")
        dtype = np.dtype(dtype)
        if dtype.hasobject:
            raise _Refused("an array of Python objects")
        nbytes = math.prod(shape) * dtype.itemsize
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != nbytes:
            got = len(raw) if isinstance(raw, (bytes, bytearray)) else type(raw).__name__
            raise _Refused(f"an array of shape {shape} ({nbytes} bytes) from {got} bytes of data")
        self.array = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _PendingArray:
    if subtype is not _ArrayType:
        raise _Refused(f"_reconstruct of {getattr(subtype, '__name__', subtype)!r}, not of numpy.ndarray")
    return _PendingArray()


def _bytes(*args: Any) -> bytes:
    if args and isinstance(args[0], int):
        raise _Refused(f"bytes({args[0]}) (an allocation of {args[0]} bytes)")
    return bytes(*args)


_STAND_INS: dict[str, Any] = {"ndarray": _ArrayType, "_reconstruct": _reconstruct, "bytes": _bytes}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a dataset pickle")
        return _STAND_INS.get(name) or super().find_class(module, name)


def _check_opcodes(data: bytes) -> None:
    """Refuse counted lengths, frames and memo indices past the pickle's own size, which the unpickler
    would allocate before noticing the data is not there (``pickletools.genops`` reads without running)."""
    for opcode, arg, pos in pickletools.genops(io.BytesIO(data)):  # ValueError: a length past the end
        if opcode.name == "FRAME" and isinstance(arg, int) and arg > len(data) - (pos or 0):
            raise _Refused(f"a frame of {arg} bytes in {len(data)} bytes")
        if opcode.name in _MEMO_OPCODES and isinstance(arg, int) and arg > len(data):
            raise _Refused(f"memo index {arg} in a pickle of {len(data)} bytes")


def _resolve(obj: Any) -> Any:
    """``obj`` with every pending array replaced by the array built from its state."""
    if isinstance(obj, _PendingArray):
        if obj.array is None:
            raise _Refused("an array without its data")
        return obj.array
    if isinstance(obj, dict):
        return {k: _resolve(v) for k, v in obj.items()}
    if isinstance(obj, list) and any(isinstance(v, (_PendingArray, dict, list)) for v in obj):
        return [_resolve(v) for v in obj]
    return obj


def _load_batch(path: Path) -> dict:
    """One CIFAR python batch, unpickled with the allow-list above, refusing any allocation bomb."""
    try:
        size = path.stat().st_size
        if size > MAX_PICKLE_BYTES:
            raise _Refused(f"{size} bytes, over the {MAX_PICKLE_BYTES} a dataset batch may have")
        raw = path.read_bytes()
        _check_opcodes(raw)
        data = _resolve(_SafeUnpickler(io.BytesIO(raw), encoding="bytes").load())
    except FileNotFoundError as exc:
        raise PixmixError(f"{path} not found: point --data at the folder that holds it") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OverflowError, RecursionError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise PixmixError(f"{path}: not a CIFAR python batch ({reason}); re-download it") from None
    if not isinstance(data, dict):
        raise PixmixError(f"{path}: not a CIFAR python batch (a {type(data).__name__}, not a dict)")
    return data


class _ArrayDataset(Sequence[tuple[Image.Image, int]]):
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:  # type: ignore[override]
        return Image.fromarray(np.ascontiguousarray(self.images[index])), int(self.labels[index])


class CIFAR(_ArrayDataset):
    """CIFAR-10/100 from the python batches (``cifar-10-batches-py`` / ``cifar-100-python``) under ``root``."""

    def __init__(self, root: str | Path, name: str = "cifar10", train: bool = True) -> None:
        if name not in CIFAR_LAYOUT:
            raise PixmixError(f"name must be one of {sorted(CIFAR_LAYOUT)}, got {name!r}", param="name")
        folder, train_files, test_files, label_key, classes = CIFAR_LAYOUT[name]
        base = Path(root) / folder
        if not base.is_dir():
            raise PixmixError(f"{base} does not exist: expected the extracted {name} python batches under {root}")
        images, labels = [], []
        for file in train_files if train else test_files:
            path = base / file
            batch = _load_batch(path)
            data, lab = batch.get(b"data"), batch.get(label_key)
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise PixmixError(f"{path}: b'data' must be a uint8 array [N, 3072]")
            lab = np.asarray(lab, dtype=np.int64)
            if lab.shape != (data.shape[0],) or lab.min(initial=0) < 0 or lab.max(initial=0) >= classes:
                raise PixmixError(f"{path}: {label_key!r} must hold {data.shape[0]} labels in [0, {classes})")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(lab)
        self.images = np.ascontiguousarray(np.concatenate(images))
        self.labels = np.concatenate(labels)
        self.classes = classes


class CIFARCorrupted(_ArrayDataset):
    """One corruption at one severity (1-5) of CIFAR-10-C / CIFAR-100-C (``<corruption>.npy`` + ``labels.npy``).

    Each ``.npy`` holds the 5 severities one after the other, 10,000 images each; it is memory-mapped.
    """

    def __init__(self, root: str | Path, name: str, corruption: str, severity: int) -> None:
        if name not in CORRUPTED_LAYOUT:
            raise PixmixError(f"name must be one of {sorted(CORRUPTED_LAYOUT)}, got {name!r}", param="name")
        if corruption not in CORRUPTIONS:
            raise PixmixError(f"corruption must be one of {list(CORRUPTIONS)}, got {corruption!r}", param="corruption")
        if severity not in (1, 2, 3, 4, 5):
            raise PixmixError(f"severity must be 1..5, got {severity!r}", param="severity")
        folder = Path(root) / CORRUPTED_LAYOUT[name]
        images = load_npy(folder / f"{corruption}.npy")
        labels = load_npy(folder / "labels.npy")
        per = images.shape[0] // 5 if images.shape[0] % 5 == 0 else 0
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3) or per == 0:
            raise PixmixError(f"{folder / (corruption + '.npy')}: expected uint8 [5*N, 32, 32, 3], got "
                             f"{images.dtype} {list(images.shape)}")
        if labels.shape[0] not in (per, 5 * per):
            raise PixmixError(f"{folder / 'labels.npy'}: {labels.shape[0]} labels for {per} images per severity")
        rows = slice((severity - 1) * per, severity * per)
        self.images = images[rows]
        self.labels = np.asarray(labels[rows] if labels.shape[0] == 5 * per else labels, dtype=np.int64)
        self.corruption, self.severity = corruption, severity


def load_npy(path: Path) -> np.ndarray:
    """A memory-mapped ``.npy`` array, never unpickled; one-line PixmixError naming the file otherwise."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)  # never unpickle object arrays
    except FileNotFoundError as exc:
        raise PixmixError(f"{path} not found: point --data at the folder that holds it") from exc
    except (ValueError, OSError) as exc:
        raise PixmixError(f"{path}: not a readable .npy array ({exc}); re-download it") from exc


# The 300K Random Images stream tag for derive_seed: (seed, RANDOM_IMAGES_STREAM, epoch, index).
RANDOM_IMAGES_STREAM = 0x300


class RandomImages(Sequence[Image.Image]):
    """Outlier Exposure's 300K Random Images (``300K_random_images.npy``: ``uint8 [N, 32, 32, 3]``), memory-mapped,
    as PIL images: the paper's "300K Random Images" mixing set (Table 4) without unpacking it into files.

    With ``augment`` (the default) each image goes through the reference's transform, ``RandomCrop(32,
    padding=4)`` (zero padding) then a horizontal flip with probability 1/2, drawn from ``(seed, epoch,
    index)``: the same image for the same index and epoch in any process (call :meth:`set_epoch`).
    """

    def __init__(self, path: str | Path, seed: int = 0, augment: bool = True) -> None:
        self.path = Path(path)
        images = load_npy(self.path)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
            raise PixmixError(f"{self.path}: expected uint8 [N, H, W, 3] images (300K_random_images.npy is "
                              f"[300000, 32, 32, 3]), got {images.dtype} {list(images.shape)}", param="path")
        if seed < 0:
            raise PixmixError(f"seed must be >= 0, got {seed}", param="seed")
        self.images, self.seed, self.augment, self.epoch = images, seed, augment, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops and flips of ``epoch`` from now on."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> Image.Image:  # type: ignore[override]
        image = np.asarray(self.images[index])  # IndexError past the end, as a sequence should
        if self.augment:
            stream = derive_seed(self.seed, RANDOM_IMAGES_STREAM, self.epoch, int(index) % len(self))
            image = reference_crop_flip(image, np.random.default_rng(stream))
        return Image.fromarray(np.ascontiguousarray(image))


def reference_crop_flip(image: np.ndarray, rng: np.random.Generator, padding: int = 4) -> np.ndarray:
    """``RandomCrop(size, padding)`` with zero padding, then a horizontal flip with probability 1/2, on one
    ``uint8 [H, W, 3]`` image (torchvision's order of draws: the crop's top, its left, then the flip)."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    top, left = (int(v) for v in rng.integers(0, 2 * padding + 1, size=2))
    out = padded[top:top + h, left:left + w]
    return out[:, ::-1] if rng.random() < 0.5 else out


@dataclass(frozen=True)
class ClassFolderItem:
    path: Path
    label: int


class ClassFolders(Sequence[tuple[Image.Image, int]]):
    """``root/<class>/**/<image>`` (ImageNet's ``train/<wnid>/*.JPEG``, any ImageFolder tree).

    Classes are the sorted sub-folder names (for ImageNet: the standard class indices of the wnids).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise PixmixError(f"{self.root} does not exist or is not a folder of class folders")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise PixmixError(f"{self.root} holds no class folders (expected root/<class>/<image>)")
        self.class_to_index = {name: i for i, name in enumerate(self.classes)}
        self.items = [
            ClassFolderItem(p, self.class_to_index[name])
            for name in self.classes
            for p in sorted((self.root / name).rglob("*"))
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.items:
            raise PixmixError(f"{self.root}: no images under its class folders ({', '.join(sorted(IMAGE_SUFFIXES))})")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:  # type: ignore[override]
        item = self.items[index]
        return load_rgb(item.path), item.label
