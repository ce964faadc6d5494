"""The paper's evaluation (spec section 7): clean error and the five safety measures of one checkpoint.

``evaluate`` reads the datasets in their usual on-disk layout under one data folder:

==========  =======================================  ==========================================
suite       required                                 optional (skipped with a note when absent)
==========  =======================================  ==========================================
cifar10     cifar-10-batches-py/test_batch           CIFAR-10-C-Bar/<c>.npy + labels.npy
            CIFAR-10-C/<c>.npy + labels.npy          CIFAR-10-P/<p>.npy (uint8 [N, T, 32, 32, 3])
cifar100    cifar-100-python/test, CIFAR-100-C/      CIFAR-100-C-Bar/, CIFAR-100-P/
imagenet    val/<wnid>/*.JPEG                        ImageNet-P/<p>.npy (uint8 [N, T, H, W, 3])
            ImageNet-C/<c>/<1..5>/<wnid>/*.JPEG
all                                                  ood/{textures,svhn,lsun,places}/**/<image>
==========  =======================================  ==========================================

Inference is batched under ``torch.no_grad`` in fp32 (on CUDA too); inputs are normalised with the
checkpoint's recipe mean and std. PGD runs in fp32. Everything random (PGD's start, the synthetic OOD
sets, subsets of folder OOD sets) comes from ``seed``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pixmix.evaluate import metrics, ood
from pixmix.evaluate.attacks import pgd_linf
from pixmix.data.readers import CIFAR, ClassFolders, load_npy
from pixmix.models import model_from_checkpoint
from pixmix.utils.seeding import generator_for
from pixmix.augment.transforms import CenterCrop, Resize, to_uint8_tensor

PGD = {"epsilon": 2 / 255, "steps": 20, "step_size": 0.5 / 255}
DEFAULT_OOD_SAMPLES = 2000  # the reference: len(CIFAR test) // 5


@dataclass(frozen=True)
class Suite:
    name: str
    classes: int
    corrupted: str  # -C folder
    c_bar: str | None
    perturbed: str  # -P folder

    @property
    def is_imagenet(self) -> bool:
        return self.name == "imagenet"


SUITES = {
    "cifar10": Suite("cifar10", 10, "CIFAR-10-C", "CIFAR-10-C-Bar", "CIFAR-10-P"),
    "cifar100": Suite("cifar100", 100, "CIFAR-100-C", "CIFAR-100-C-Bar", "CIFAR-100-P"),
    "imagenet": Suite("imagenet", 1000, "ImageNet-C", None, "ImageNet-P"),
}


@dataclass
class Outputs:
    """Per image: predicted class, max softmax probability and (when asked) the top-5 classes."""

    pred: np.ndarray
    conf: np.ndarray
    top5: np.ndarray | None = None


# --- image sources: batches of uint8 [B, 3, S, S] tensors --------------------------------------------


def _subset(n: int, limit: int | None) -> np.ndarray:
    """Evenly spaced indices of at most ``limit`` of ``n`` items (deterministic; spans every class folder)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).astype(np.int64))


def _fit(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-2:] == (size, size):
        return images
    return CenterCrop(size).apply(Resize(size).apply(images, None), None)


def _array_batches(array: np.ndarray, indices: np.ndarray, batch_size: int, size: int) -> Iterator[torch.Tensor]:
    """uint8 NHWC array rows (memory-mapped is fine: only a batch is read at a time)."""
    for start in range(0, len(indices), batch_size):
        rows = np.ascontiguousarray(array[indices[start:start + batch_size]])
        yield _fit(torch.from_numpy(rows).permute(0, 3, 1, 2), size)


class _PilImages(torch.utils.data.Dataset):
    def __init__(self, images: Sequence[Any], indices: np.ndarray, transform: Callable[[Image.Image], Image.Image]):
        self.images, self.indices, self.transform = images, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.images[int(self.indices[i])]
        image = item[0] if isinstance(item, tuple) else item
        return to_uint8_tensor(self.transform(image))


def _pil_batches(images: Sequence[Any], indices: np.ndarray, batch_size: int, transform: Callable,
                 workers: int) -> Iterator[torch.Tensor]:
    # Nothing here is random; the generator only keeps the loader's base seed off the global RNG.
    loader = torch.utils.data.DataLoader(_PilImages(images, indices, transform), batch_size=batch_size,
                                         shuffle=False, num_workers=workers, generator=torch.Generator())
    yield from loader


class _ResizeCrop:
    """Shorter side to ``resize``, then the centre ``size`` square; images whose shorter side is already
    ``size`` only get the crop when ``crop_if_fitted`` (ImageNet-C is stored pre-cropped at 224)."""

    def __init__(self, size: int, resize: int, crop_if_fitted: bool = False) -> None:
        self.size, self.crop_if_fitted = size, crop_if_fitted
        self.resize, self.crop = Resize(resize), CenterCrop(size)

    def __call__(self, image: Image.Image) -> Image.Image:
        if not (self.crop_if_fitted and min(image.size) == self.size):
            image = self.resize.apply(image, None)
        return self.crop.apply(image, None)


def _stacked_severities(folder: Path, name: str, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """A -C / -C-Bar file: ``uint8 [5 * N, H, W, 3]`` severities one after the other, and its labels."""
    path = folder / f"{name}.npy"
    images = load_npy(path)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] % 5 or not images.shape[0]:
        raise ValueError(f"{path}: expected uint8 [5*N, H, W, 3], got {images.dtype} {list(images.shape)}")
    per = images.shape[0] // 5
    if labels.shape[0] not in (per, 5 * per):
        raise ValueError(f"{folder / 'labels.npy'}: {labels.shape[0]} labels for {per} images per severity")
    return images, (np.tile(labels, 5) if labels.shape[0] == per else labels).astype(np.int64), per


# --- the model ----------------------------------------------------------------------------------------


class _Net:
    """A model on a device with its normalisation; batched inference."""

    def __init__(self, model: torch.nn.Module, mean: Sequence[float], std: Sequence[float], device: torch.device,
                 progress: bool) -> None:
        self.model, self.device, self.progress = model.to(device).eval(), device, progress
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def to_float(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.to(self.device, non_blocking=True).float().div_(255)

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        # fp32, no autocast: half-precision logits tie near-equal classes, which moves flip rates, top-5
        # distances and the max-softmax scores of calibration and anomaly detection.
        return self.model(self.normalize(self.to_float(batch))).float()

    def run(self, batches: Iterator[torch.Tensor], total: int, desc: str, top5: bool = False) -> Outputs:
        from tqdm import tqdm

        preds, confs, tops = [], [], []
        with tqdm(total=total, desc=desc, unit="img", disable=not self.progress, leave=False) as bar:
            for batch in batches:
                logits = self.logits(batch)
                conf, _ = logits.softmax(dim=1).max(dim=1)
                preds.append(logits.argmax(dim=1).cpu())  # ties: the first (lowest) class, as top5[:, 0]
                confs.append(conf.cpu())
                if top5:
                    # A stable descending sort ranks tied classes by class id (rankdata "ordinal").
                    tops.append(torch.sort(logits, dim=1, descending=True, stable=True)[1][:, :5].cpu())
                bar.update(len(batch))
        if not preds:
            raise ValueError(f"{desc}: no images to evaluate")
        return Outputs(torch.cat(preds).numpy().astype(np.int64), torch.cat(confs).numpy().astype(np.float64),
                       torch.cat(tops).numpy().astype(np.int64) if top5 else None)

    def pgd_predictions(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], total: int,
                        generator: torch.Generator) -> np.ndarray:
        from tqdm import tqdm

        preds = []
        with tqdm(total=total, desc="PGD", unit="img", disable=not self.progress, leave=False) as bar:
            for images, labels in batches:
                x, y = self.to_float(images), labels.to(self.device)
                adv = pgd_linf(self.model, x, y, generator=generator, normalize=self.normalize, **PGD)
                with torch.no_grad():
                    preds.append(self.model(self.normalize(adv)).argmax(dim=1).cpu())
                bar.update(len(images))
        return torch.cat(preds).numpy().astype(np.int64)


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device: {device!r} is not a device (use auto, cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here; use --device cpu")
    return dev


def _recipe(state: dict[str, Any], suite: Suite, notes: list[str]) -> dict[str, Any]:
    from pixmix.augment.recipes import CIFAR as CIFAR_RECIPE
    from pixmix.augment.recipes import IMAGENET

    recipe = state.get("recipe")
    if isinstance(recipe, dict) and {"mean", "std"} <= set(recipe):
        default = IMAGENET if suite.is_imagenet else CIFAR_RECIPE
        return {"name": recipe.get("name", default.name), "mean": [float(v) for v in recipe["mean"]],
                "std": [float(v) for v in recipe["std"]], "image_size": int(recipe.get("image_size", default.image_size))}
    default = IMAGENET if suite.is_imagenet else CIFAR_RECIPE
    notes.append(f"checkpoint has no recipe: used the {default.name} recipe's mean, std and image size")
    return {"name": default.name, "mean": list(default.mean), "std": list(default.std), "image_size": default.image_size}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# --- evaluation -----------------------------------------------------------------------------------------


def evaluate(
    checkpoint: str | Path,
    suite: str,
    data_dir: str | Path,
    *,
    device: str = "auto",
    batch_size: int = 256,
    seed: int = 0,
    pgd_samples: int | None = None,
    ood_samples: int = DEFAULT_OOD_SAMPLES,
    limit: int | None = None,
    drop_last_bin: bool = False,
    workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``suite`` (cifar10, cifar100, imagenet) with the datasets under ``data_dir``.

    ``limit`` caps every set (test set, each corruption x severity, each -P file's sequences, each OOD
    set) at that many images, evenly spaced, for quick runs; ``pgd_samples`` caps the PGD images
    (default: every evaluated test image). ``drop_last_bin`` reproduces the reference calibration code.
    Returns plain JSON-able results in percent (T5D is a distance in [0, 15]); skipped optional sets
    are listed in ``notes``. Raises ValueError (one line, naming the path) when a required set is missing.
    """
    if suite not in SUITES:
        raise ValueError(f"--suite must be one of {', '.join(SUITES)}, got {suite!r}")
    for option, value in (("--batch-size", batch_size), ("--ood-samples", ood_samples), ("--limit", limit),
                          ("--pgd-samples", pgd_samples)):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be >= 1, got {value}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    spec, data = SUITES[suite], Path(data_dir)
    _check_required(spec, data)
    started = time.perf_counter()
    notes: list[str] = []
    # Building the network draws its (then overwritten) initial weights from the global RNG: leave it as it was.
    with torch.random.fork_rng(devices=[]):
        model, state = model_from_checkpoint(checkpoint)
    recipe = _recipe(state, spec, notes)
    size = recipe["image_size"]
    num_classes = int(state["model"]["num_classes"])
    if not spec.is_imagenet and num_classes != spec.classes:
        raise ValueError(f"{checkpoint}: its model has {num_classes} classes but --suite {suite} has {spec.classes}")
    dev = _device(device)
    net = _Net(model, recipe["mean"], recipe["std"], dev, progress)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    ctx = _Context(spec, data, net, size, batch_size, limit, workers, num_classes, notes, log, state.get("classes"))

    results: dict[str, Any] = {
        "suite": suite,
        "checkpoint": _jsonable({"path": str(checkpoint), "model": state.get("model"), "recipe": recipe,
                                 "classes": state.get("classes"), "config": state.get("config")}),
        "settings": {"device": str(dev), "batch_size": batch_size, "seed": seed, "pgd_samples": pgd_samples,
                     "ood_samples": ood_samples, "limit": limit, "drop_last_bin": drop_last_bin,
                     "workers": workers, "pgd": dict(PGD, random_start=True)},
        "notes": notes,
    }

    clean = ctx.clean()
    results["clean"] = {
        "error": float(np.mean(clean.outputs.pred != clean.labels) * 100), "samples": len(clean.labels),
        "rms_calibration": metrics.rms_calibration_error(clean.outputs.conf, clean.outputs.pred == clean.labels,
                                                         drop_last_bin=drop_last_bin),
    }
    log(f"clean error {results['clean']['error']:.2f}% on {len(clean.labels)} images")

    results["corruptions"] = ctx.corruptions(spec.corrupted, metrics.CORRUPTIONS, drop_last_bin, required=True)
    log(f"corruption mCE {results['corruptions']['mce']:.2f}%")
    if spec.c_bar is not None:
        c_bar = ctx.corruptions(spec.c_bar, metrics.C_BAR_CORRUPTIONS, drop_last_bin, required=False)
        if c_bar is not None:
            results["c_bar"] = c_bar
            log(f"C-Bar mean error {c_bar['mean_error']:.2f}%")
    else:
        notes.append("skipped: ImageNet-C-Bar is not supported")

    perturbations = ctx.perturbations()
    if perturbations is not None:
        results["perturbations"] = perturbations
        log(f"mFR {perturbations['mfr']:.2f}%, mT5D {perturbations['mt5d']:.3f}")

    pgd_idx = clean.indices[_subset(len(clean.indices), pgd_samples)]
    pgd_preds = net.pgd_predictions(ctx.labelled_batches(clean, pgd_idx), len(pgd_idx), generator_for(seed, 1))
    pgd_labels = clean.labels[np.searchsorted(clean.indices, pgd_idx)]
    results["adversarial"] = {"pgd_error": float(np.mean(pgd_preds != pgd_labels) * 100), "samples": len(pgd_idx),
                              **PGD}
    log(f"PGD error {results['adversarial']['pgd_error']:.2f}% on {len(pgd_idx)} images")

    results["anomaly"] = ctx.anomaly(-clean.outputs.conf, ood_samples, seed)
    log(f"anomaly AUROC {results['anomaly']['auroc']:.2f}% over {len(results['anomaly']['per_set'])} sets")

    results["summary"] = {
        "clean_error": results["clean"]["error"],
        "mce": results["corruptions"]["mce"],
        "mfr": perturbations["mfr"] if perturbations else None,
        "pgd_error": results["adversarial"]["pgd_error"],
        "rms_calibration_c": results["corruptions"]["rms_calibration"],
        "auroc": results["anomaly"]["auroc"],
    }
    results["seconds"] = round(time.perf_counter() - started, 2)
    return results


def _check_required(spec: Suite, data: Path) -> None:
    """Fail before any inference if a required set is missing."""
    if spec.is_imagenet:
        if not (data / "val").is_dir():
            raise ValueError(f"{data / 'val'} not found: expected ImageNet's val/<wnid>/*.JPEG under --data")
        for corruption in metrics.CORRUPTIONS:
            for severity in range(1, 6):
                path = data / spec.corrupted / corruption / str(severity)
                if not path.is_dir():
                    raise ValueError(f"{path} not found: expected ImageNet-C/<corruption>/<1..5>/<wnid>/ under --data")
        return
    from pixmix.data.readers import CIFAR_LAYOUT

    folder, _, test_files, _, _ = CIFAR_LAYOUT[spec.name]
    path = data / folder / test_files[0]
    if not path.is_file():
        raise ValueError(f"{path} not found: expected the extracted {spec.name} python batches under --data")
    for name in (*metrics.CORRUPTIONS, "labels"):
        path = data / spec.corrupted / f"{name}.npy"
        if not path.is_file():
            raise ValueError(f"{path} not found: expected {spec.corrupted}/<corruption>.npy and labels.npy under --data")


@dataclass
class _Clean:
    indices: np.ndarray
    labels: np.ndarray
    outputs: Outputs
    images: Any  # uint8 NHWC array (CIFAR) or ClassFolders (ImageNet)


class _Context:
    def __init__(self, spec: Suite, data: Path, net: _Net, size: int, batch_size: int, limit: int | None,
                 workers: int, num_classes: int, notes: list[str], log: Callable[[str], None],
                 trained_classes: Any = None) -> None:
        self.spec, self.data, self.net, self.size, self.batch_size = spec, data, net, size, batch_size
        self.limit, self.workers, self.num_classes, self.notes, self.log = limit, workers, num_classes, notes, log
        self.trained_classes = trained_classes
        self.wnids: dict[str, int] = {}  # ImageNet: val's class index of each wnid, set by clean()
        # ImageNet's evaluation crop: shorter side to 256/224 of the input size, then the centre.
        resize = round(size * 256 / 224) if spec.is_imagenet else size
        self.transform = _ResizeCrop(size, resize)
        self.c_transform = _ResizeCrop(size, resize, crop_if_fitted=True)

    def batches(self, images: Any, indices: np.ndarray, transform: Callable | None = None) -> Iterator[torch.Tensor]:
        if isinstance(images, np.ndarray):
            return _array_batches(images, indices, self.batch_size, self.size)
        return _pil_batches(images, indices, self.batch_size, transform or self.transform, self.workers)

    def labelled_batches(self, clean: _Clean, indices: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        labels = clean.labels[np.searchsorted(clean.indices, indices)]
        for i, batch in enumerate(self.batches(clean.images, indices)):
            yield batch, torch.from_numpy(labels[i * self.batch_size:i * self.batch_size + len(batch)])

    def _check_labels(self, labels: np.ndarray, where: Path) -> None:
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"{where}: labels reach {int(labels.max())} but the checkpoint's model has "
                             f"{self.num_classes} classes; check --suite")

    def clean(self) -> _Clean:
        if self.spec.is_imagenet:
            folders = ClassFolders(self.data / "val")
            if len(folders.classes) != self.num_classes:
                raise ValueError(f"{self.data / 'val'}: {len(folders.classes)} class folders but the checkpoint's "
                                 f"model has {self.num_classes} classes")
            trained = self.trained_classes
            if isinstance(trained, list) and all(isinstance(c, str) for c in trained) and trained != folders.classes:
                raise ValueError(f"{self.data / 'val'}: its class folders are not the checkpoint's classes "
                                 f"(first differences: {sorted(set(folders.classes) ^ set(trained))[:3]})")
            self.wnids = folders.class_to_index
            images: Any = folders
            labels = np.array([item.label for item in folders.items], dtype=np.int64)
        else:
            test = CIFAR(self.data, self.spec.name, train=False)
            images, labels = test.images, test.labels
            self._check_labels(labels, self.data)
        indices = _subset(len(labels), self.limit)
        outputs = self.net.run(self.batches(images, indices), len(indices), "clean")
        return _Clean(indices, labels[indices], outputs, images)

    def corruptions(self, folder_name: str, names: Sequence[str], drop_last_bin: bool,
                    required: bool) -> dict[str, Any] | None:
        folder = self.data / folder_name
        if not folder.is_dir():
            if required:
                raise ValueError(f"{folder} not found: point --data at the folder holding {folder_name}")
            self.notes.append(f"skipped: {folder} not found")
            return None
        errors: dict[str, list[float]] = {}
        confs, corrects, samples = [], [], 0
        if self.spec.is_imagenet:
            sets = self._imagenet_c(folder, names)
        else:
            if not (folder / "labels.npy").is_file():
                raise ValueError(f"{folder / 'labels.npy'} not found: {folder_name} needs its labels.npy")
            labels_all = np.asarray(load_npy(folder / "labels.npy"))
            sets = self._cifar_c(folder, names, labels_all)
        by_name: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        for name, _severity, out, labels in sets:
            wrong = out.pred != labels
            errors.setdefault(name, []).append(float(wrong.mean()))
            confs.append(out.conf)
            corrects.append(~wrong)
            by_name.setdefault(name, ([], []))[0].append(out.conf)
            by_name[name][1].append(~wrong)
            samples = len(labels)
        # The reference evaluates each corruption's file (its 5 severities together) and averages the 15
        # calibration errors; the error over every prediction pooled is reported beside it.
        per_calibration = {name: metrics.rms_calibration_error(np.concatenate(c), np.concatenate(k),
                                                               drop_last_bin=drop_last_bin)
                           for name, (c, k) in by_name.items()}
        result: dict[str, Any] = {
            "errors": {name: [v * 100 for v in errs] for name, errs in errors.items()},
            "per_corruption": metrics.corruption_errors(errors),
            "mean_error": metrics.mce(errors),
            "rms_calibration": float(np.mean(list(per_calibration.values()))),
            "rms_calibration_per_corruption": per_calibration,
            "rms_calibration_pooled": metrics.rms_calibration_error(np.concatenate(confs), np.concatenate(corrects),
                                                                    drop_last_bin=drop_last_bin),
            "samples_per_severity": samples,
        }
        missing = [n for n in names if n not in errors]
        if missing:
            self.notes.append(f"skipped: {folder_name} has no {', '.join(missing)}; its mean covers {len(errors)} "
                              f"of {len(names)} corruptions")
        # CIFAR: the plain mean (spec). ImageNet-C: normalised per corruption by AlexNet's errors.
        use_alexnet = self.spec.is_imagenet and folder_name == self.spec.corrupted
        result["mce"] = metrics.mce(errors, metrics.ALEXNET_ERRORS) if use_alexnet else result["mean_error"]
        result["mce_normalisation"] = "alexnet" if use_alexnet else "none"
        return result

    def _cifar_c(self, folder: Path, names: Sequence[str],
                 labels_all: np.ndarray) -> Iterator[tuple[str, int, Outputs, np.ndarray]]:
        for name in names:
            if not (folder / f"{name}.npy").is_file():
                if name in metrics.CORRUPTIONS and folder.name == self.spec.corrupted:
                    raise ValueError(f"{folder / (name + '.npy')} not found: {folder.name} is incomplete")
                continue
            images, labels, per = _stacked_severities(folder, name, labels_all)
            self._check_labels(labels, folder / "labels.npy")
            rows = _subset(per, self.limit)
            for severity in range(1, 6):
                idx = (severity - 1) * per + rows
                out = self.net.run(self.batches(images, idx), len(idx), f"{name}-{severity}")
                yield name, severity, out, labels[idx]

    def _imagenet_c(self, folder: Path, names: Sequence[str]) -> Iterator[tuple[str, int, Outputs, np.ndarray]]:
        for name in names:
            for severity in range(1, 6):
                path = folder / name / str(severity)
                images = ClassFolders(path)
                unknown = [w for w in images.classes if w not in self.wnids]
                if unknown:
                    raise ValueError(f"{path}: class folders {unknown[:3]} are not in {self.data / 'val'}")
                # Map by wnid: a severity folder may lack classes, so its own indices can differ from val's.
                to_val = np.array([self.wnids[w] for w in images.classes], dtype=np.int64)
                labels = to_val[np.array([item.label for item in images.items], dtype=np.int64)]
                idx = _subset(len(labels), self.limit)
                # ImageNet-C images are stored already cropped to 224: the reference only centre-crops.
                out = self.net.run(self.batches(images, idx, self.c_transform), len(idx), f"{name}-{severity}")
                yield name, severity, out, labels[idx]

    def perturbations(self) -> dict[str, Any] | None:
        folder = self.data / self.spec.perturbed
        if not folder.is_dir():
            self.notes.append(f"skipped: {folder} not found (consistency mFR / mT5D)")
            return None
        per: dict[str, dict[str, Any]] = {}
        main, extra = ((metrics.IMAGENET_P_PERTURBATIONS, metrics.IMAGENET_P_EXTRA_PERTURBATIONS)
                       if self.spec.is_imagenet else (metrics.P_PERTURBATIONS, metrics.P_EXTRA_PERTURBATIONS))
        for name in (*main, *extra):
            path = folder / f"{name}.npy"
            if not path.is_file():
                if name in main:
                    self.notes.append(f"skipped: {path} not found")
                continue
            try:
                videos = load_npy(path)
            except ValueError as exc:  # an optional set: a bad file is skipped with a note, not fatal
                self.notes.append(f"skipped: {exc}")
                continue
            if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3 or videos.shape[1] < 2:
                self.notes.append(f"skipped: {path}: expected uint8 [N, T, H, W, 3] with T >= 2, got "
                                  f"{videos.dtype} {list(videos.shape)}")
                continue
            n, frames = videos.shape[:2]
            seqs = _subset(n, self.limit)
            flat = videos.reshape(n * frames, *videos.shape[2:])  # a view, also of a memory map
            # Whole sequences per batch; the frame order inside a sequence is kept.
            per_batch = max(1, self.batch_size // frames)
            frame_idx = (seqs[:, None] * frames + np.arange(frames)).ravel()
            batches = (b for start in range(0, len(frame_idx), per_batch * frames)
                       for b in _array_batches(flat, frame_idx[start:start + per_batch * frames],
                                               per_batch * frames, self.size))
            out = self.net.run(batches, len(frame_idx), name, top5=True)
            preds, tops = out.pred.reshape(len(seqs), frames), out.top5.reshape(len(seqs), frames, -1)
            noise = metrics.is_noise_perturbation(name)
            per[name] = {"flip_rate": metrics.flip_rate(preds, noise), "t5d": metrics.t5d(tops, noise),
                         "noise": noise, "sequences": len(seqs), "frames": int(frames),
                         "in_mean": name in main}
        counted = [v for k, v in per.items() if v["in_mean"]]
        if not counted:
            self.notes.append(f"skipped: {folder} holds none of {', '.join(main)}")
            return None
        if len(counted) < len(main):
            self.notes.append(f"mFR / mT5D over {len(counted)} of {len(main)} perturbations")
        if self.spec.is_imagenet:
            self.notes.append("ImageNet-P mFR / mT5D are not normalised by AlexNet's (its rates are not bundled)")
        return {"per_perturbation": per, "mfr": float(np.mean([v["flip_rate"] for v in counted])),
                "mt5d": float(np.mean([v["t5d"] for v in counted])), "perturbations": len(counted)}

    def anomaly(self, in_scores: np.ndarray, ood_samples: int, seed: int) -> dict[str, Any]:
        count = min(ood_samples, self.limit) if self.limit is not None else ood_samples
        per_set: dict[str, dict[str, float]] = {}
        for name in ood.SYNTHETIC_SETS:
            images = ood.synthetic_set(name, count, self.size, seed)
            out = self.net.run(self.batches(images, np.arange(count)), count, name)
            per_set[name] = {**metrics.anomaly_metrics(in_scores, -out.conf), "samples": count}
        found, notes = ood.folder_sets(self.data)
        self.notes.extend(notes)
        for key, path in found.items():
            files = ood.ImageFiles(path, limit=count, seed=seed)
            out = self.net.run(self.batches(files, np.arange(len(files))), len(files), key)
            per_set[key] = {**metrics.anomaly_metrics(in_scores, -out.conf), "samples": len(files)}
        total = len(ood.SYNTHETIC_SETS) + len(ood.FOLDER_SETS)
        if len(per_set) < total:
            self.notes.append(f"anomaly means over {len(per_set)} of {total} OOD sets")
        return {"per_set": per_set, **{k: float(np.mean([v[k] for v in per_set.values()]))
                                       for k in ("auroc", "aupr", "fpr95")}}


__all__ = ["DEFAULT_OOD_SAMPLES", "PGD", "SUITES", "Suite", "evaluate"]
