"""A tiny ImageNet-format tree in the released layouts, for smoke pipelines and tests.

:func:`write_imagenet_suite` writes, under one root, everything ``mixset shard imagenet`` and
``pixmix eval --suite imagenet`` read:

- ``train/<wnid>/<wnid>_NNNNN.JPEG`` and ``val/<wnid>/ILSVRC2012_val_NNNNNNNN.JPEG``;
- ``ImageNet-C/<corruption>/<1..5>/<wnid>/*.JPEG`` (15 corruptions, stored cropped as released);
- ``ImageNet-C-Bar/<corruption>/<severity "{:.2f}">/<wnid>/*.JPEG`` (its 10 corruptions);
- ``imagenet-r/<wnid>/*.jpg`` for the classes that are among ImageNet-R's 200;
- ``ImageNet-P/<perturbation>/<wnid>/<val name>.mp4`` (yuv420p mp4s) for its 10 perturbations;
- ``ImageNet-O/<wnid>/*.jpg``: out-of-class pictures.

The classes are real wnids: ImageNet's first class (tench, ``n01440764``, not in ImageNet-R) and then
ImageNet-R's first classes, so the R mask drops a class. Images are photo-like pictures tinted by class
(a model can learn a little); corruptions and perturbations are simple severity-graded stand-ins. Every
pixel is a pure function of the seed (local numpy generators); the whole tree takes well under a second
to a few seconds at the defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pixmix.data.benchmarks import CORRUPTIONS, IMAGENET_C_BAR_CORRUPTIONS, IMAGENET_P_PERTURBATIONS
from pixmix.evaluate.imagenet_sets import IMAGENET_R_WNIDS, c_bar_severity_folders

TENCH = "n01440764"  # ImageNet's class 0: not one of ImageNet-R's 200


def suite_wnids(classes: int) -> list[str]:
    """``classes`` real wnids, sorted: tench, then ImageNet-R's first ``classes - 1`` classes."""
    if classes < 2:
        raise ValueError(f"classes must be >= 2 (one outside ImageNet-R, one inside), got {classes}")
    return sorted([TENCH, *IMAGENET_R_WNIDS[:classes - 1]])


def _pictures(n: int, size: int, labels: np.ndarray, classes: int, seed: int) -> np.ndarray:
    """uint8 ``[n, size, size, 3]`` photo-like pictures, each tinted by its class's colour."""
    from pixmix.demo import synthetic_images

    pics = np.stack([np.asarray(im, dtype=np.float32) for im in synthetic_images(n, size, seed=seed)])
    palette = np.random.default_rng([seed, 1]).uniform(0, 255, (classes, 3)).astype(np.float32)
    tinted = 0.6 * pics + 0.4 * palette[labels][:, None, None, :]
    return np.clip(tinted, 0, 255).astype(np.uint8)


def _corrupt(images: np.ndarray, kind: int, severity: int, rng: np.random.Generator) -> np.ndarray:
    """One of three severity-graded stand-ins (noise, lower contrast, brighter) of ``images``."""
    x = images.astype(np.float64)
    s = severity / 5.0
    if kind == 0:
        x = x + rng.normal(0, 60 * s, x.shape)
    elif kind == 1:
        mean = x.mean(axis=(-3, -2), keepdims=True)
        x = mean + (x - mean) * (1 - 0.8 * s)
    else:
        x = x + 120 * s
    return np.clip(x, 0, 255).astype(np.uint8)


def _save_jpegs(folder: Path, images: np.ndarray, names: Sequence[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(images, names, strict=True):
        Image.fromarray(image).save(folder / name, format="JPEG", quality=90)


def write_video(path: Path, frames: np.ndarray, fps: int = 10, codec: str = "mpeg4") -> None:
    """``frames`` (uint8 ``[T, H, W, 3]``, H and W multiples of 4) as a yuv420p mp4.

    ``codec="libx264"`` writes H.264 as the ImageNet-P release is; the default, FFmpeg's own MPEG-4 Part 2
    encoder, is used for the suite because libx264 was seen to give different bytes for the same frames
    from run to run (even on one thread), and the suite is a pure function of its seed.
    """
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        if not isinstance(stream, av.VideoStream):
            raise ValueError(f"{codec} is not a video codec")
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        # One encoding thread and a fixed, high quality.
        stream.options = {"qmin": "1", "qmax": "3"} if codec == "mpeg4" else {"crf": "12"}
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(_yuv420p(frame), format="yuv420p")))
        container.mux(stream.encode(None))


def _yuv420p(rgb: np.ndarray) -> np.ndarray:
    """An RGB frame as planar yuv420p (BT.601, limited range: FFmpeg's default), ``uint8 [H * 3 / 2, W]``.

    Converted here rather than by FFmpeg's scaler, whose output was seen to vary from run to run.
    """
    x = rgb.astype(np.float64)
    y = 16 + x @ np.array([65.481, 128.553, 24.966]) / 255
    cb = 128 + x @ np.array([-37.797, -74.203, 112.0]) / 255
    cr = 128 + x @ np.array([112.0, -93.786, -18.214]) / 255
    h, w = y.shape

    def half(plane: np.ndarray) -> np.ndarray:  # 2 x 2 means
        return plane.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).reshape(h // 4, w)

    planes = np.concatenate([y, half(cb), half(cr)])
    return np.clip(np.rint(planes), 0, 255).astype(np.uint8)


def _sequence(image: np.ndarray, name: str, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A ``frames``-long perturbation sequence of ``image``: fresh noise per frame for noise
    perturbations (around the clean first frame), a steady drift (brightness, shift) otherwise."""
    x = image.astype(np.float64)
    if "noise" in name:
        video = [x] + [x + rng.normal(0, 16, x.shape) for _ in range(frames - 1)]
    elif name in ("translate", "rotate", "tilt", "scale"):
        video = [np.roll(x, 2 * t, axis=1) for t in range(frames)]
    else:
        video = [x + 12.0 * t for t in range(frames)]
    return np.clip(np.stack(video), 0, 255).astype(np.uint8)


def write_imagenet_suite(root: str | Path, classes: int = 3, per_class: int = 4, val_per_class: int = 2,
                         size: int = 48, p_frames: int = 5, ood_images: int = 6, seed: int = 0) -> Path:
    """Write the tiny tree described in the module docstring under ``root``; returns ``root``.

    ``size`` (a multiple of 4) is the side of every picture; ImageNet-C, -C-Bar and -P hold ``val_per_class``
    images (sequences) per class; ``p_frames`` frames per ImageNet-P video.
    """
    root = Path(root)
    if size < 8 or size % 4:
        raise ValueError(f"size must be a multiple of 4, at least 8 (yuv420p video), got {size}")
    wnids = suite_wnids(classes)
    val_names = [[f"ILSVRC2012_val_{c * val_per_class + i + 1:08d}.JPEG" for i in range(val_per_class)]
                 for c in range(classes)]
    val = {}
    for split, count, offset in (("train", per_class, 0), ("val", val_per_class, 1)):
        labels = np.repeat(np.arange(classes), count)
        images = _pictures(len(labels), size, labels, classes, seed * 7919 + offset).reshape(classes, count, size,
                                                                                              size, 3)
        for c, wnid in enumerate(wnids):
            names = [f"{wnid}_{i:05d}.JPEG" for i in range(count)] if split == "train" else val_names[c]
            _save_jpegs(root / split / wnid, images[c], names)
        if split == "val":
            val = {wnid: images[c] for c, wnid in enumerate(wnids)}
    _write_corrupted(root, val, val_names, wnids, seed)
    _write_renditions(root, val, wnids, seed)
    _write_perturbed(root, val, val_names, wnids, p_frames, seed)
    if ood_images > 0:
        _write_out_of_class(root, ood_images, size, seed)
    return root


def _write_corrupted(root: Path, val: dict[str, np.ndarray], val_names: list[list[str]], wnids: list[str],
                     seed: int) -> None:
    """ImageNet-C (severities 1..5) and ImageNet-C-Bar (the release's severity folder names)."""
    sets = [("ImageNet-C", name, [str(s) for s in range(1, 6)]) for name in CORRUPTIONS]
    sets += [("ImageNet-C-Bar", name, list(c_bar_severity_folders(name))) for name in IMAGENET_C_BAR_CORRUPTIONS]
    for k, (folder, name, severities) in enumerate(sets):
        rng = np.random.default_rng([seed, 17, k])
        for s, severity in enumerate(severities, start=1):
            for c, wnid in enumerate(wnids):
                _save_jpegs(root / folder / name / severity / wnid, _corrupt(val[wnid], k % 3, s, rng), val_names[c])


def _write_renditions(root: Path, val: dict[str, np.ndarray], wnids: list[str], seed: int) -> None:
    """``imagenet-r/<wnid>/*.jpg`` for the classes among ImageNet-R's 200: posterised, mirrored val pictures."""
    for wnid in wnids:
        if wnid in IMAGENET_R_WNIDS:
            renditions = (val[wnid][:, :, ::-1] // 64 * 64 + 32).astype(np.uint8)
            _save_jpegs(root / "imagenet-r" / wnid, renditions, [f"art_{seed}_{i}.jpg" for i in range(len(renditions))])


def _write_perturbed(root: Path, val: dict[str, np.ndarray], val_names: list[list[str]], wnids: list[str],
                     frames: int, seed: int) -> None:
    """``ImageNet-P/<perturbation>/<wnid>/<val name>.mp4``: one sequence per val picture."""
    for p, name in enumerate(IMAGENET_P_PERTURBATIONS):
        rng = np.random.default_rng([seed, 23, p])
        for c, wnid in enumerate(wnids):
            for image, file in zip(val[wnid], val_names[c], strict=True):
                video = _sequence(image, name, frames, rng)
                write_video(root / "ImageNet-P" / name / wnid / file.replace(".JPEG", ".mp4"), video)


def _write_out_of_class(root: Path, count: int, size: int, seed: int) -> None:
    """``ImageNet-O/<wnid>/*.jpg``: pictures of their own seed, untinted (out of the suite's classes)."""
    from pixmix.demo import synthetic_mixing_pictures

    pictures = np.stack([np.asarray(im.convert("RGB")) for im in synthetic_mixing_pictures(count, size,
                                                                                          seed=seed * 1009 + 5)])
    _save_jpegs(root / "ImageNet-O" / "n01443537", pictures, [f"ood_{i:05d}.jpg" for i in range(count)])


__all__ = ["TENCH", "suite_wnids", "write_imagenet_suite", "write_video"]
