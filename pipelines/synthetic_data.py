"""Tiny CIFAR-100-format datasets and a folder of photo-like images, written for the smoke profile.

Everything is in the real on-disk formats that ``mixset shard`` and ``pixmix eval`` read, so the smoke
pipeline exercises the same code paths as a run on the real data:

- ``cifar-100-python/{train,test,meta}``: protocol-2 pickles of dicts with bytes keys (``b"data"``
  uint8 ``[N, 3072]``, ``b"fine_labels"``, ``b"coarse_labels"``, ``b"filenames"``);
- ``CIFAR-100-C/<corruption>.npy`` (5 severities stacked, uint8 ``[5 * N, 32, 32, 3]``) + ``labels.npy``;
- ``CIFAR-100-P/<perturbation>.npy`` (uint8 ``[N, T, 32, 32, 3]``) for the 10 perturbations of the mFR;
- ``ood/{textures,svhn,lsun,places}/`` folders of a few pictures each;
- a folder of photo-like JPEGs (the stand-in for the paper's "300K Random Images").

Images are :func:`pixmix.demo.synthetic_images` (shapes over gradients) tinted by class, so a model
can learn a little; corruptions and perturbations are simple, severity-graded versions of the test
images. Everything is a pure function of the seed (local numpy generators only).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_C = "CIFAR-100-C"
CIFAR100_P = "CIFAR-100-P"
CLASSES = 100
OOD_SETS = ("textures", "svhn", "lsun", "places")  # pixmix.evaluate.ood.FOLDER_SETS


def _images(n: int, labels: np.ndarray, seed: int) -> np.ndarray:
    """uint8 ``[n, 32, 32, 3]``: photo-like pictures, each tinted by the colour of its class."""
    from pixmix.demo import synthetic_images

    pics = np.stack([np.asarray(im, dtype=np.float32) for im in synthetic_images(n, 32, seed=seed)])
    palette = np.random.default_rng(seed + 1).uniform(0, 255, (CLASSES, 3)).astype(np.float32)
    tinted = 0.6 * pics + 0.4 * palette[labels][:, None, None, :]
    return np.clip(tinted, 0, 255).astype(np.uint8)


def _write_batch(path: Path, images: np.ndarray, labels: np.ndarray, name: str) -> None:
    batch = {
        b"filenames": [f"{name}_{i:05d}.png".encode() for i in range(len(labels))],
        b"batch_label": name.encode(),
        b"fine_labels": [int(v) for v in labels],
        b"coarse_labels": [int(v) // 5 for v in labels],
        b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(labels), 3072)),
    }
    with open(path, "wb") as fh:
        pickle.dump(batch, fh, protocol=2)


def write_cifar100(root: Path, train: int = 200, test: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """``root/cifar-100-python/{train,test,meta}``; returns the test images and labels."""
    folder = Path(root) / CIFAR100_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, offset in (("train", train, 0), ("test", test, 1)):
        labels = np.arange(n, dtype=np.int64) % CLASSES
        images = _images(n, labels, seed * 7919 + offset)
        _write_batch(folder / split, images, labels, split)
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    with open(folder / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"class_{c:02d}".encode() for c in range(CLASSES)],
                     b"coarse_label_names": [f"super_{c:02d}".encode() for c in range(CLASSES // 5)]}, fh, protocol=2)
    return out


def _corrupt(images: np.ndarray, kind: int, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A severity-graded corruption of one of three families (noise, blur-like contrast, brightness)."""
    x: np.ndarray = images.astype(np.float32)  # the noise branch makes it float64: kept, so the data stay the same
    s = severity / 5.0
    if kind == 0:
        x = x + rng.normal(0, 60 * s, x.shape)
    elif kind == 1:
        mean = x.mean(axis=(1, 2), keepdims=True)
        x = mean + (x - mean) * (1 - 0.8 * s)
    else:
        x = x + 120 * s
    return np.clip(x, 0, 255).astype(np.uint8)


def write_cifar100_c(root: Path, test_images: np.ndarray, test_labels: np.ndarray, per_severity: int | None = None,
                     seed: int = 0) -> Path:
    """``root/CIFAR-100-C/<corruption>.npy`` for all 15 corruptions and ``labels.npy`` (5 x per severity)."""
    from pixmix.data.benchmarks import CORRUPTIONS

    n = len(test_labels) if per_severity is None else min(per_severity, len(test_labels))
    folder = Path(root) / CIFAR100_C
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "labels.npy", np.tile(test_labels[:n].astype(np.uint8), 5))
    for c, name in enumerate(CORRUPTIONS):
        rng = np.random.default_rng([seed, 17, c])
        stacked = np.concatenate([_corrupt(test_images[:n], c % 3, s, rng) for s in range(1, 6)])
        np.save(folder / f"{name}.npy", stacked)
    return folder


def write_cifar100_p(root: Path, test_images: np.ndarray, names: tuple[str, ...] | None = None,
                     sequences: int = 8, frames: int = 4, seed: int = 0) -> Path:
    """``root/CIFAR-100-P/<name>.npy``: uint8 ``[N, T, 32, 32, 3]`` sequences around the test images."""
    from pixmix.data.benchmarks import P_PERTURBATIONS

    names = P_PERTURBATIONS if names is None else names
    folder = Path(root) / CIFAR100_P
    folder.mkdir(parents=True, exist_ok=True)
    base = test_images[:sequences].astype(np.float32)
    for p, name in enumerate(names):
        rng = np.random.default_rng([seed, 23, p])
        video: list[np.ndarray]
        if "noise" in name:
            video = [base + rng.normal(0, 12, base.shape) for _ in range(frames)]
        else:
            video = [base + 10.0 * t for t in range(frames)]
        np.save(folder / f"{name}.npy", np.clip(np.stack(video, axis=1), 0, 255).astype(np.uint8))
    return folder


def write_natural_images(folder: Path, count: int = 24, seed: int = 0) -> Path:
    """``folder/img-NNNNN.jpg``: photo-like JPEGs of varied sizes (any folder of natural images will do)."""
    from pixmix.demo import synthetic_images

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 29])
    for i, image in enumerate(synthetic_images(count, 96, seed=seed + 101)):
        w, h = int(rng.integers(72, 97)), int(rng.integers(72, 97))
        image.resize((w, h), Image.Resampling.BICUBIC).save(folder / f"img-{i:05d}.jpg", format="JPEG", quality=90)
    return folder


def write_ood_folders(root: Path, count: int = 16, seed: int = 0) -> Path:
    """``root/ood/<set>/img-NNNNN.png`` for the four folder OOD sets: textures are fractals, the others
    photo-like pictures of their own seeds (32 px, as CIFAR's OOD sets are evaluated)."""
    from pixmix.demo import synthetic_images, synthetic_mixing_pictures

    for i, name in enumerate(OOD_SETS):
        folder = Path(root) / "ood" / name
        folder.mkdir(parents=True, exist_ok=True)
        make = synthetic_mixing_pictures if name == "textures" else synthetic_images
        for j, image in enumerate(make(count, 32, seed=seed * 1009 + 211 + i)):
            image.save(folder / f"img-{j:05d}.png", format="PNG")
    return Path(root) / "ood"


def write_cifar100_suite(root: Path, train: int = 200, test: int = 100, c_per_severity: int | None = None,
                         p_sequences: int = 8, p_frames: int = 4, perturbations: tuple[str, ...] | None = None,
                         ood_images: int = 0, seed: int = 0) -> Path:
    """Everything ``pixmix eval --suite cifar100`` reads (but -C-Bar) and the training batch.

    -P: ``perturbations`` (default: the 10 of the mFR) with ``p_sequences`` sequences each (0: no -P set);
    ``ood_images`` images per folder OOD set (0: none, the synthetic OOD sets only).
    """
    root = Path(root)
    made = write_cifar100(root, train=train, test=test, seed=seed)
    write_cifar100_c(root, made["test_images"], made["test_labels"], per_severity=c_per_severity, seed=seed)
    if p_sequences > 0:
        write_cifar100_p(root, made["test_images"], perturbations, sequences=min(p_sequences, test),
                         frames=p_frames, seed=seed)
    if ood_images > 0:
        write_ood_folders(root, ood_images, seed=seed)
    return root


__all__ = ["CIFAR100_C", "CIFAR100_FOLDER", "CIFAR100_P", "OOD_SETS", "write_cifar100", "write_cifar100_c",
           "write_cifar100_p", "write_cifar100_suite", "write_natural_images", "write_ood_folders"]
