"""Tiny datasets in their real on-disk formats, written by the tests (nothing is downloaded)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from pixmix.data.benchmarks import CORRUPTIONS


def write_imagenet(root: Path, classes: int = 3, per_class: int = 4, val_per_class: int = 2, seed: int = 0) -> Path:
    """``root/{train,val}/<wnid>/*.JPEG``: photo-like JPEGs of varied sizes, some greyscale, some CMYK."""
    rng = np.random.default_rng(seed)
    wnids = [f"n{1440764 + 17 * c:08d}" for c in range(classes)]
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c, wnid in enumerate(wnids):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                w, h = int(rng.integers(40, 120)), int(rng.integers(40, 120))
                yy, xx = np.mgrid[0:h, 0:w]
                base = np.stack([(xx * (3 + c)) % 256, (yy * 5 + 40 * i) % 256, (xx + yy) % 256], axis=-1)
                noise = rng.integers(0, 40, size=(h, w, 3))
                image = Image.fromarray(((base + noise) % 256).astype(np.uint8), "RGB")
                mode = ("L", "CMYK", "RGB")[(c + i) % 3] if i % 2 == 0 else "RGB"
                name = f"{wnid}_{i:05d}.JPEG" if split == "train" else f"ILSVRC2012_val_{c * 100 + i:08d}.JPEG"
                image.convert(mode).save(folder / name, format="JPEG", quality=90)
    return root


def write_cifar10(root: Path, per_batch: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 python batches as the originals are: protocol-2 pickles of dicts with bytes keys."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    all_images, all_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels,
                 b"data": images.transpose(0, 3, 1, 2).reshape(per_batch, 3072),
                 b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
        all_images.append(images)
        all_labels.append(labels)
    return np.concatenate(all_images), np.concatenate(all_labels)


def write_cifar10_c(root: Path, per_severity: int = 2, seed: int = 0) -> np.ndarray:
    """``root/CIFAR-10-C/<corruption>.npy`` (5 severities stacked) and ``labels.npy``; returns the labels."""
    rng = np.random.default_rng(seed)
    folder = root / "CIFAR-10-C"
    folder.mkdir(parents=True)
    labels = rng.integers(0, 10, 5 * per_severity).astype(np.uint8)
    np.save(folder / "labels.npy", labels)
    for corruption in CORRUPTIONS:
        np.save(folder / f"{corruption}.npy", rng.integers(0, 256, (5 * per_severity, 32, 32, 3), dtype=np.uint8))
    return labels


def write_mixset(out: Path, count: int = 6, size: int = 64, seed: int = 0) -> Path:
    """A small mixing set of procedural fractals, built by ``mixset build`` itself."""
    from mixset.build.builder import BuildConfig, build

    manifests = out.with_name(out.name + "-manifests")
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / "gen.toml").write_text(
        f'name = "gen"\nsource = "fractals"\nkind = "procedural"\nlicence = "CC0-1.0"\n[procedural]\ncount = {count}\n')
    build(BuildConfig(out=out, sources=("fractals",), seed=seed, image_size=size, shard_size=4, manifests=manifests),
          log=lambda m: None, progress=False)
    assert json.loads((out / "manifest.json").read_text())["samples"] >= 2
    return out
