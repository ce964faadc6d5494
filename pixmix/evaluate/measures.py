"""The paper's measures, one function each: clean error, corruptions (-C, -C-Bar), consistency (-P),
PGD, calibration and anomaly detection.

Each takes the network (:class:`~pixmix.evaluate.net.Net`), the data folder, the suite and the run's
:class:`~pixmix.evaluate.options.EvalOptions`, and returns its part of the results (percent; T5D is a
distance in [0, 15]). Optional sets that are absent are skipped with a line appended to ``notes``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixmix.data.readers import CIFAR, ClassFolders, load_npy
from pixmix.evaluate import imagenet_sets, metrics, ood
from pixmix.evaluate.inputs import Feeder, array_batches, stacked_severities, subset
from pixmix.evaluate.net import Net, Outputs
from pixmix.evaluate.options import PGD, EvalOptions, Suite
from pixmix.utils.errors import PixmixError
from pixmix.utils.seeding import generator_for

# One corruption x severity evaluated: (corruption, outputs, labels).
Corrupted = tuple[str, Outputs, np.ndarray]


def feeder(net: Net, suite: Suite, options: EvalOptions) -> Feeder:
    """How the suite's images reach ``net``."""
    return Feeder(net.size, options.batch_size, options.workers, suite.is_imagenet)


def _check_labels(labels: np.ndarray, where: Path, classes: int) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise PixmixError(f"{where}: labels reach {int(labels.max())} but the checkpoint's model has "
                          f"{classes} classes; check --suite", param="suite")


# --- clean ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clean:
    """The clean measure's results, and the test images PGD attacks and anomaly detection compares with."""

    result: dict[str, Any]
    images: np.ndarray | ClassFolders  # uint8 NHWC array (CIFAR) or ImageNet's val folders
    indices: np.ndarray  # the evaluated images, sorted
    labels: np.ndarray  # their labels
    confidences: np.ndarray  # their max softmax probabilities
    wnids: dict[str, int]  # ImageNet: val's class index of each wnid ({} for CIFAR)


def clean(net: Net, data: Path, suite: Suite, options: EvalOptions, trained_classes: Any = None) -> Clean:
    """Error and RMS calibration error on the test set (ImageNet: val), at most ``options.limit`` images.

    ``trained_classes`` (the checkpoint's class names, when saved) must be ImageNet val's class folders.
    """
    images: np.ndarray | ClassFolders
    if suite.is_imagenet:
        images, labels, wnids = _imagenet_val(data, net.classes, trained_classes)
    else:
        test = CIFAR(data, suite.name, train=False)
        images, labels, wnids = test.images, test.labels, {}
        _check_labels(labels, data, net.classes)
    indices = subset(len(labels), options.limit)
    out = net.run(feeder(net, suite, options).batches(images, indices), len(indices), "clean")
    labels = labels[indices]
    rms = metrics.rms_calibration_errors(out.conf, out.pred == labels)
    result = {"error": float(np.mean(out.pred != labels) * 100), "samples": len(labels),
              "rms_calibration": rms["reference"], "rms_calibration_corrected": rms["corrected"]}
    return Clean(result, images, indices, labels, out.conf, wnids)


def _imagenet_val(data: Path, classes: int, trained_classes: Any) -> tuple[ClassFolders, np.ndarray, dict[str, int]]:
    """ImageNet's val folders, their labels and the class index of each wnid, checked against the model."""
    folders = ClassFolders(data / "val")
    if len(folders.classes) != classes:
        raise PixmixError(f"{data / 'val'}: {len(folders.classes)} class folders but the checkpoint's "
                          f"model has {classes} classes")
    trained = trained_classes
    if isinstance(trained, list) and all(isinstance(c, str) for c in trained) and trained != folders.classes:
        raise PixmixError(f"{data / 'val'}: its class folders are not the checkpoint's classes "
                          f"(first differences: {sorted(set(folders.classes) ^ set(trained))[:3]})")
    labels = np.array([item.label for item in folders.items], dtype=np.int64)
    return folders, labels, folders.class_to_index


# --- corruptions and calibration ----------------------------------------------------------------------


def corruptions(net: Net, data: Path, suite: Suite, options: EvalOptions, notes: list[str],
                wnids: dict[str, int]) -> dict[str, Any]:
    """The -C set (required): error per corruption and severity, mCE and the calibration error on it.

    ``wnids`` (ImageNet) maps ImageNet-C's class folders to val's class indices (:attr:`Clean.wnids`).
    """
    folder = data / suite.corrupted
    if not folder.is_dir():
        raise PixmixError(f"{folder} not found: point --data at the folder holding {suite.corrupted}",
                          param="data_dir")
    result = _corruption_set(net, folder, suite, options, notes, metrics.CORRUPTIONS, wnids)
    if result is None:  # _check_required saw every corruption before any inference
        raise PixmixError(f"{folder} holds none of {', '.join(metrics.CORRUPTIONS)}")
    return result


def corruptions_bar(net: Net, data: Path, suite: Suite, options: EvalOptions, notes: list[str],
                    wnids: dict[str, int] | None = None) -> dict[str, Any] | None:
    """The -C-Bar set (optional), as :func:`corruptions` (ImageNet-C-Bar: its 10 corruptions in the released
    ``<corruption>/<severity>/<wnid>/`` folders, labelled by ``wnids``); None when it is skipped."""
    if suite.c_bar is None:
        notes.append(f"skipped: {suite.name} has no -C-Bar set")
        return None
    folder = data / suite.c_bar
    if not folder.is_dir():
        notes.append(f"skipped: {folder} not found")
        return None
    names = metrics.IMAGENET_C_BAR_CORRUPTIONS if suite.is_imagenet else metrics.C_BAR_CORRUPTIONS
    return _corruption_set(net, folder, suite, options, notes, names, wnids or {})


def _corruption_set(net: Net, folder: Path, suite: Suite, options: EvalOptions, notes: list[str],
                    names: Sequence[str], wnids: dict[str, int]) -> dict[str, Any] | None:
    """Errors, mCE and calibration of one corruption folder; None (with a note) when it holds none of ``names``."""
    sets = _imagenet_c(net, folder, suite, options, names, wnids) if suite.is_imagenet else \
        _cifar_c(net, folder, suite, options, names)
    errors: dict[str, list[float]] = {}
    by_name: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    samples = 0
    for name, out, labels in sets:
        wrong = out.pred != labels
        errors.setdefault(name, []).append(float(wrong.mean()))
        # Calibration is computed per set the reference evaluates, then averaged: each CIFAR file (its 5
        # severities together), each ImageNet corruption x severity folder (75 for -C, 50 for -C-Bar).
        key = f"{name}/{len(errors[name])}" if suite.is_imagenet else name
        confs, corrects = by_name.setdefault(key, ([], []))
        confs.append(out.conf)
        corrects.append(~wrong)
        samples = len(labels)
    if not errors:
        notes.append(f"skipped: {folder} holds none of {', '.join(names)}")
        return None
    result: dict[str, Any] = {
        "errors": {name: [v * 100 for v in errs] for name, errs in errors.items()},
        "per_corruption": metrics.corruption_errors(errors),
        "mean_error": metrics.mce(errors),
        **calibration(by_name),
        "samples_per_severity": samples,
    }
    missing = [n for n in names if n not in errors]
    if missing:
        notes.append(f"skipped: {folder.name} has no {', '.join(missing)}; its mean covers {len(errors)} "
                     f"of {len(names)} corruptions")
    # CIFAR: the plain mean (spec). ImageNet-C: normalised per corruption by AlexNet's errors.
    use_alexnet = suite.is_imagenet and folder.name == suite.corrupted
    result["mce"] = metrics.mce(errors, metrics.ALEXNET_ERRORS) if use_alexnet else result["mean_error"]
    result["mce_normalisation"] = "alexnet" if use_alexnet else "none"
    return result


def calibration(by_name: dict[str, tuple[list[np.ndarray], list[np.ndarray]]],
                drop_last_bin: bool | None = None) -> dict[str, Any]:
    """RMS calibration error on corrupted images, from each corruption's (confidences, correct) per severity.

    The reference evaluates each corruption's file (its 5 severities together) and averages the
    calibration errors; the error over every prediction pooled is reported beside it. Every figure comes
    twice: the reference's (``rms_calibration*``: the most confident bin dropped, as the paper's numbers
    were computed) and the corrected one (``*_corrected``: every bin). ``drop_last_bin`` is ignored (both
    are always computed); it stays so that older callers keep working.
    """
    per = {name: metrics.rms_calibration_errors(np.concatenate(c), np.concatenate(k))
           for name, (c, k) in by_name.items()}
    confs = [c for cs, _ in by_name.values() for c in cs]
    corrects = [k for _, ks in by_name.values() for k in ks]
    pooled = metrics.rms_calibration_errors(np.concatenate(confs), np.concatenate(corrects))
    out: dict[str, Any] = {}
    for kind, suffix in (("reference", ""), ("corrected", "_corrected")):
        out[f"rms_calibration{suffix}"] = float(np.mean([v[kind] for v in per.values()]))
        out[f"rms_calibration_per_corruption{suffix}"] = {name: v[kind] for name, v in per.items()}
        out[f"rms_calibration_pooled{suffix}"] = pooled[kind]
    return out


def _cifar_c(net: Net, folder: Path, suite: Suite, options: EvalOptions, names: Sequence[str]) -> Iterator[Corrupted]:
    """Each present ``<name>.npy`` of a CIFAR -C / -C-Bar folder, severity by severity."""
    if not (folder / "labels.npy").is_file():
        raise PixmixError(f"{folder / 'labels.npy'} not found: {folder.name} needs its labels.npy")
    labels_all = np.asarray(load_npy(folder / "labels.npy"))
    feed = feeder(net, suite, options)
    for name in names:
        if not (folder / f"{name}.npy").is_file():
            if name in metrics.CORRUPTIONS and folder.name == suite.corrupted:
                raise PixmixError(f"{folder / (name + '.npy')} not found: {folder.name} is incomplete")
            continue
        images, labels, per = stacked_severities(folder, name, labels_all)
        _check_labels(labels, folder / "labels.npy", net.classes)
        rows = subset(per, options.limit)
        for severity in range(1, 6):
            idx = (severity - 1) * per + rows
            out = net.run(feed.batches(images, idx), len(idx), f"{name}-{severity}")
            yield name, out, labels[idx]


def _imagenet_c(net: Net, folder: Path, suite: Suite, options: EvalOptions, names: Sequence[str],
                wnids: dict[str, int]) -> Iterator[Corrupted]:
    """ImageNet-C's ``<name>/<1..5>/<wnid>/`` (or -C-Bar's ``<name>/<severity>/<wnid>/``) folders, labelled
    with val's index of each wnid; corruptions absent from ``folder`` are left out."""
    feed = feeder(net, suite, options)
    for name in names:
        for path in imagenet_sets.severity_folders(folder, name):
            images = ClassFolders(path)
            unknown = [w for w in images.classes if w not in wnids]
            if unknown:
                raise PixmixError(f"{path}: class folders {unknown[:3]} are not in {folder.parent / 'val'}")
            # Map by wnid: a severity folder may lack classes, so its own indices can differ from val's.
            to_val = np.array([wnids[w] for w in images.classes], dtype=np.int64)
            labels = to_val[np.array([item.label for item in images.items], dtype=np.int64)]
            idx = subset(len(labels), options.limit)
            out = net.run(feed.batches(images, idx), len(idx), f"{name}-{path.name}")
            yield name, out, labels[idx]


# --- consistency ---------------------------------------------------------------------------------------


def perturbations(net: Net, data: Path, suite: Suite, options: EvalOptions, notes: list[str]) -> dict[str, Any] | None:
    """The -P set (optional): flip rate and top-5 distance per perturbation, mFR and mT5D over the
    suite's main perturbations; None when the folder or all of them are missing."""
    folder = data / suite.perturbed
    if not folder.is_dir():
        notes.append(f"skipped: {folder} not found (consistency mFR / mT5D)")
        return None
    main, extra = ((metrics.IMAGENET_P_PERTURBATIONS, metrics.IMAGENET_P_EXTRA_PERTURBATIONS)
                   if suite.is_imagenet else (metrics.P_PERTURBATIONS, metrics.P_EXTRA_PERTURBATIONS))
    per: dict[str, dict[str, Any]] = {}
    for name in (*main, *extra):
        path = folder / f"{name}.npy"
        if suite.is_imagenet and (folder / name).is_dir():  # the release: <perturbation>/<wnid>/*.mp4
            consistency = imagenet_sets.video_consistency(net, folder / name, name, feeder(net, suite, options),
                                                          options.limit)
            per[name] = {**consistency, "in_mean": name in main}
            continue
        if not path.is_file():
            if name in main:
                notes.append(f"skipped: {path} not found")
            continue
        videos = _videos(path, notes)
        if videos is not None:
            per[name] = {**_consistency(net, videos, name, options), "in_mean": name in main}
    counted = [v for v in per.values() if v["in_mean"]]
    if not counted:
        notes.append(f"skipped: {folder} holds none of {', '.join(main)}")
        return None
    if len(counted) < len(main):
        notes.append(f"mFR / mT5D over {len(counted)} of {len(main)} perturbations")
    raw = {"mfr_raw": float(np.mean([v["flip_rate"] for v in counted])),
           "mt5d_raw": float(np.mean([v["t5d"] for v in counted]))}
    result = {"per_perturbation": per, **raw, "perturbations": len(counted)}
    if not suite.is_imagenet:  # CIFAR-P's mFR / mT5D are plain means (spec section 7)
        return {**result, "mfr": raw["mfr_raw"], "mt5d": raw["mt5d_raw"], "normalisation": "none"}
    # ImageNet-P: normalised by AlexNet's rates, as ImageNet-P defines mFR / mT5D.
    names = [n for n, v in per.items() if v["in_mean"]]
    normalised = imagenet_sets.normalised_rates(per, names, imagenet_sets.p_baseline_rates(options.p_baseline))
    if normalised is None:
        notes.append("ImageNet-P mFR / mT5D not normalised: AlexNet's rates are not bundled; pass AlexNet's "
                     "results.json as p_baseline (--p-baseline). Unnormalised: mfr_raw / mt5d_raw")
    return {**result, "mfr": None if normalised is None else normalised["mfr"],
            "mt5d": None if normalised is None else normalised["mt5d"],
            "normalisation": "none" if normalised is None else "alexnet"}


def _videos(path: Path, notes: list[str]) -> np.ndarray | None:
    """A -P file, ``uint8 [N, T, H, W, 3]`` with T >= 2; None with a note when it is not one."""
    try:
        videos = load_npy(path)
    except ValueError as exc:  # an optional set: a bad file is skipped with a note, not fatal
        notes.append(f"skipped: {exc}")
        return None
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3 or videos.shape[1] < 2:
        notes.append(f"skipped: {path}: expected uint8 [N, T, H, W, 3] with T >= 2, got "
                     f"{videos.dtype} {list(videos.shape)}")
        return None
    return videos


def _consistency(net: Net, videos: np.ndarray, name: str, options: EvalOptions) -> dict[str, Any]:
    """Flip rate and T5D of one perturbation's sequences (at most ``options.limit`` of them)."""
    n, frames = videos.shape[:2]
    seqs = subset(n, options.limit)
    flat = videos.reshape(n * frames, *videos.shape[2:])  # a view, also of a memory map
    frame_idx = (seqs[:, None] * frames + np.arange(frames)).ravel()
    # Whole sequences per batch; the frame order inside a sequence is kept.
    per_batch = max(1, options.batch_size // frames) * frames
    out = net.run(array_batches(flat, frame_idx, per_batch, net.size), len(frame_idx), name, top5=True)
    if out.top5 is None:  # run(top5=True) always ranks
        raise RuntimeError("Net.run returned no top-5 classes")
    preds, tops = out.pred.reshape(len(seqs), frames), out.top5.reshape(len(seqs), frames, -1)
    noise = metrics.is_noise_perturbation(name)
    return {"flip_rate": metrics.flip_rate(preds, noise), "t5d": metrics.t5d(tops, noise), "noise": noise,
            "sequences": len(seqs), "frames": int(frames)}


# --- adversaries ---------------------------------------------------------------------------------------


def adversarial(net: Net, clean_set: Clean, suite: Suite, options: EvalOptions) -> dict[str, Any]:
    """Error under PGD on the clean measure's images (at most ``options.pgd_samples``), seeded starts."""
    idx = clean_set.indices[subset(len(clean_set.indices), options.pgd_samples)]
    labels = clean_set.labels[np.searchsorted(clean_set.indices, idx)]
    feed = feeder(net, suite, options)

    def labelled() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, batch in enumerate(feed.batches(clean_set.images, idx)):
            start = i * feed.batch_size
            yield batch, torch.from_numpy(labels[start:start + len(batch)])

    preds = net.pgd_predictions(labelled(), len(idx), generator_for(options.seed, 1))
    return {"pgd_error": float(np.mean(preds != labels) * 100), "samples": len(idx), **PGD}


# --- anomaly detection ---------------------------------------------------------------------------------


def anomaly(net: Net, data: Path, suite: Suite, options: EvalOptions, in_confidences: np.ndarray,
            notes: list[str], *, feed: Feeder | None = None, sets: Mapping[str, str] | None = None) -> dict[str, Any]:
    """AUROC, AUPR and FPR95 of the negative max softmax probability, the clean images (their
    ``in_confidences``) against each synthetic set and each folder set under ``data/ood/`` (``sets``: folder
    -> paper name, default :data:`~pixmix.evaluate.ood.FOLDER_SETS`); ``feed``: default the suite's."""
    in_scores = -in_confidences
    count = min(options.ood_samples, options.limit) if options.limit is not None else options.ood_samples
    feed = feeder(net, suite, options) if feed is None else feed
    sets = ood.FOLDER_SETS if sets is None else sets
    per_set: dict[str, dict[str, float]] = {}
    for name in ood.SYNTHETIC_SETS:
        images = ood.synthetic_set(name, count, net.size, options.seed)
        out = net.run(feed.batches(images, np.arange(count)), count, name)
        per_set[name] = {**metrics.anomaly_metrics(in_scores, -out.conf), "samples": count}
    found, missing = ood.folder_sets(data, sets)
    notes.extend(missing)
    for key, path in found.items():
        files = ood.ImageFiles(path, limit=count, seed=options.seed)
        out = net.run(feed.batches(files, np.arange(len(files))), len(files), key)
        per_set[key] = {**metrics.anomaly_metrics(in_scores, -out.conf), "samples": len(files)}
    total = len(ood.SYNTHETIC_SETS) + len(sets)
    if len(per_set) < total:
        notes.append(f"anomaly means over {len(per_set)} of {total} OOD sets")
    return {"per_set": per_set, **{k: float(np.mean([v[k] for v in per_set.values()]))
                                   for k in ("auroc", "aupr", "fpr95", "fpr95_ours")}}


__all__ = ["Clean", "adversarial", "anomaly", "calibration", "clean", "corruptions", "corruptions_bar", "feeder",
           "perturbations"]
