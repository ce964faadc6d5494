"""The paper's evaluation (spec section 7): clean error and the five safety measures of one checkpoint.

``evaluate`` reads the datasets in their usual on-disk layout under one data folder:

==========  =======================================  ==========================================
suite       required                                 optional (skipped with a note when absent)
==========  =======================================  ==========================================
cifar10     cifar-10-batches-py/test_batch           CIFAR-10-C-Bar/<c>.npy + labels.npy
            CIFAR-10-C/<c>.npy + labels.npy          CIFAR-10-P/<p>.npy (uint8 [N, T, 32, 32, 3])
cifar100    cifar-100-python/test, CIFAR-100-C/      CIFAR-100-C-Bar/, CIFAR-100-P/
imagenet    val/<wnid>/*.JPEG                        ImageNet-C-Bar/<c>/<"{:.2f}" severity>/<wnid>/*
            ImageNet-C/<c>/<1..5>/<wnid>/*.JPEG      imagenet-r/<wnid>/*.jpg (ImageNet-R)
                                                     ImageNet-P/<p>/<wnid>/*.mp4, or ImageNet-P/<p>.npy
                                                     ImageNet-O/<wnid>/* (or --ood-folder)
places365   places365_val.txt + val_256/*.jpg        ood/{textures,svhn,imagenet,places}/**/<image>
all                                                  ood/{textures,svhn,lsun,places}/**/<image>
==========  =======================================  ==========================================

Inference is batched under ``torch.no_grad`` in fp32 (on CUDA too); inputs are normalised with the
checkpoint's recipe mean and std. PGD runs in fp32. Everything random (PGD's start, the synthetic OOD
sets, subsets of folder OOD sets) comes from ``seed``.

This module runs the measures in turn; each one is a function of :mod:`pixmix.evaluate.measures` (ImageNet's
own sets: :mod:`pixmix.evaluate.imagenet_sets`), the
network is :mod:`pixmix.evaluate.net`'s, the options and suites are :mod:`pixmix.evaluate.options`'.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pixmix.evaluate import imagenet_sets, measures, metrics, places365
from pixmix.evaluate.net import Net, load_net
from pixmix.evaluate.options import DEFAULT_OOD_SAMPLES, PGD, SUITES, EvalOptions, Suite, default_workers, suite_named
from pixmix.utils.errors import PixmixError

REFERENCE_CALIBRATION_NOTE = ("--reference-calibration has no effect: every RMS calibration figure is reported both "
                              "ways (the reference's, last bin dropped, beside the paper's; the corrected beside it)")


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
    p_baseline: str | None = None,
    ood_folder: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``suite`` (cifar10, cifar100, imagenet, places365) with the datasets under
    ``data_dir`` (places365, the paper's Table 13: clean error, calibration and anomaly detection only).

    ``limit`` caps every set (test set, each corruption x severity, each -P file's sequences, each OOD
    set) at that many images, evenly spaced, for quick runs; ``pgd_samples`` caps the PGD images
    (default: every evaluated test image). Calibration is always reported both ways (the reference's, last
    bin dropped, and the corrected one): ``drop_last_bin`` has no effect (kept for old callers; noted).
    ``workers`` decode folder images (default: one per CPU, at most 8). ImageNet: ``p_baseline`` (AlexNet's
    results.json) normalises ImageNet-P's mFR / mT5D; ``ood_folder`` replaces ImageNet-O as the out-of-class
    images (see :mod:`pixmix.evaluate.imagenet_sets`). Returns plain JSON-able results
    in percent (T5D is a distance in [0, 15]); skipped optional sets are listed in ``notes``. Raises
    :class:`~pixmix.utils.errors.PixmixError` (one line, naming the path or option) when an option is
    bad or a required set is missing.
    """
    spec = suite_named(suite)
    options = EvalOptions(batch_size=batch_size, seed=seed, pgd_samples=pgd_samples, ood_samples=ood_samples,
                          limit=limit, drop_last_bin=drop_last_bin,
                          workers=default_workers() if workers is None else workers,
                          p_baseline=None if p_baseline is None else str(p_baseline),
                          ood_folder=None if ood_folder is None else str(ood_folder))
    data = Path(data_dir)
    check_required(spec, data)
    if spec.is_imagenet:  # ImageNet's own options fail here, before any inference
        imagenet_sets.p_baseline_rates(options.p_baseline)
        imagenet_sets.out_of_class_folder(data, options.ood_folder)
    started = time.perf_counter()
    notes: list[str] = [REFERENCE_CALIBRATION_NOTE] if drop_last_bin else []
    net, state, recipe = load_net(checkpoint, spec, device, progress, notes)
    results: dict[str, Any] = {
        "suite": spec.name,
        "checkpoint": _jsonable({"path": str(checkpoint), "model": state.get("model"), "recipe": recipe,
                                 "classes": state.get("classes"), "config": state.get("config")}),
        "settings": {"device": str(net.device), **options.settings(), "pgd": dict(PGD, random_start=True)},
        # --limit: the numbers are on a subset, not comparable to the paper's full-set rows (the report says so)
        "subset": {"limit": options.limit} if options.limit is not None else None,
        "notes": notes,
    }
    results.update(run_measures(net, data, spec, options, notes, log, trained_classes=state.get("classes")))
    results["summary"] = summary(results)
    results["seconds"] = round(time.perf_counter() - started, 2)
    return results


IMAGENET_PGD_NOTE = ("PGD not run on ImageNet (the paper reports none: every method's accuracy falls to zero at "
                     "2/255); --pgd-samples N runs it")


def run_measures(net: Net, data: Path, suite: Suite, options: EvalOptions, notes: list[str],
                 log: Callable[[str], None], trained_classes: Any = None) -> dict[str, Any]:
    """Every measure in the paper's order, each logged: clean, corruptions, -C-Bar and -P (when present),
    PGD and anomaly detection. Skipped optional sets add to ``notes``."""
    if suite.name == "places365":
        return places365.run_measures(net, data, options, notes, log)
    clean = measures.clean(net, data, suite, options, trained_classes)
    out: dict[str, Any] = {"clean": clean.result}
    log(f"clean error {clean.result['error']:.2f}% on {clean.result['samples']} images")
    out["corruptions"] = measures.corruptions(net, data, suite, options, notes, clean.wnids)
    log(f"corruption mCE {out['corruptions']['mce']:.2f}%")
    c_bar = measures.corruptions_bar(net, data, suite, options, notes, clean.wnids)
    if c_bar is not None:
        out["c_bar"] = c_bar
        log(f"C-Bar mean error {c_bar['mean_error']:.2f}%")
    if suite.is_imagenet:
        r = imagenet_sets.renditions_result(net, data, measures.feeder(net, suite, options), options.limit,
                                            clean.wnids, notes, measures.calibration)
        if r is not None:
            out["r"] = r
            log(f"ImageNet-R error {r['error']:.2f}% on {r['samples']} images")
    perturbations = measures.perturbations(net, data, suite, options, notes)
    if perturbations is not None:
        out["perturbations"] = perturbations
        log(f"mFR {perturbations['mfr_raw']:.2f}% (unnormalised), mT5D {perturbations['mt5d_raw']:.3f}")
    if suite.is_imagenet and options.pgd_samples is None:
        notes.append(IMAGENET_PGD_NOTE)  # the paper's protocol: no PGD on ImageNet; asked for, it runs
    else:
        out["adversarial"] = measures.adversarial(net, clean, suite, options)
        log(f"PGD error {out['adversarial']['pgd_error']:.2f}% on {out['adversarial']['samples']} images")
    out["anomaly"] = _anomaly(net, data, suite, options, clean.confidences, notes)
    log(f"anomaly AUROC {out['anomaly']['auroc']:.2f}% over {len(out['anomaly']['per_set'])} sets")
    return out


def _anomaly(net: Net, data: Path, suite: Suite, options: EvalOptions, in_confidences: Any,
             notes: list[str]) -> dict[str, Any]:
    """ImageNet: out-of-class detection on ImageNet-O (or ``options.ood_folder``) when present, as the paper's
    ImageNet columns; otherwise (and for CIFAR) the synthetic and folder OOD sets."""
    folder = imagenet_sets.out_of_class_folder(data, options.ood_folder) if suite.is_imagenet else None
    if folder is None:
        if suite.is_imagenet:
            notes.append(f"skipped: {data / 'ImageNet-O'} not found (out-of-class anomaly detection, the paper's "
                         "ImageNet AUROC / AUPR): the anomaly figures are on the synthetic and ood/ sets")
        return measures.anomaly(net, data, suite, options, in_confidences, notes)
    count = min(options.ood_samples, options.limit) if options.limit is not None else options.ood_samples
    return imagenet_sets.out_of_class(net, folder, measures.feeder(net, suite, options), in_confidences, count,
                                      options.seed)


# Summary key -> (measure, its result key); the paper's way first, then the corrected / our-definition twin.
SUMMARY_SOURCES: dict[str, tuple[str, str]] = {
    "clean_error": ("clean", "error"),
    "mce": ("corruptions", "mce"),
    "cbar_error": ("c_bar", "mean_error"),
    "r_error": ("r", "error"),
    "mfr": ("perturbations", "mfr"),
    "mt5d": ("perturbations", "mt5d"),
    "mfr_raw": ("perturbations", "mfr_raw"),
    "mt5d_raw": ("perturbations", "mt5d_raw"),
    "pgd_error": ("adversarial", "pgd_error"),
    "rms_calibration_clean": ("clean", "rms_calibration"),
    "rms_calibration_c": ("corruptions", "rms_calibration"),
    "rms_calibration_cbar": ("c_bar", "rms_calibration"),
    "rms_calibration_r": ("r", "rms_calibration"),
    "rms_calibration_clean_corrected": ("clean", "rms_calibration_corrected"),
    "rms_calibration_c_corrected": ("corruptions", "rms_calibration_corrected"),
    "rms_calibration_cbar_corrected": ("c_bar", "rms_calibration_corrected"),
    "rms_calibration_r_corrected": ("r", "rms_calibration_corrected"),
    "auroc": ("anomaly", "auroc"),
    "aupr": ("anomaly", "aupr"),
    "fpr95": ("anomaly", "fpr95"),
    "fpr95_ours": ("anomaly", "fpr95_ours"),
}


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of every paper table (:data:`SUMMARY_SOURCES`); None where a measure did not run.

    Each figure printed beside the paper's is computed the paper's way (RMS calibration with the reference's
    last bin dropped, Outlier Exposure's FPR95); ``*_corrected`` / ``fpr95_ours`` hold the corrected ones.
    """
    out: dict[str, Any] = {}
    for key, (measure, field) in SUMMARY_SOURCES.items():
        part = results.get(measure)
        out[key] = part.get(field) if isinstance(part, dict) else None
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def check_required(suite: Suite, data: Path) -> None:
    """Fail before any inference if a required set is missing."""
    if suite.name == "places365":
        places365.check_required(data)
        return
    if suite.is_imagenet:
        if not (data / "val").is_dir():
            raise PixmixError(f"{data / 'val'} not found: expected ImageNet's val/<wnid>/*.JPEG under --data",
                              param="data_dir")
        for corruption in metrics.CORRUPTIONS:
            for severity in range(1, 6):
                path = data / suite.corrupted / corruption / str(severity)
                if not path.is_dir():
                    raise PixmixError(f"{path} not found: expected ImageNet-C/<corruption>/<1..5>/<wnid>/ under "
                                      "--data", param="data_dir")
        return
    from pixmix.data.readers import CIFAR_LAYOUT

    folder, _, test_files, _, _ = CIFAR_LAYOUT[suite.name]
    path = data / folder / test_files[0]
    if not path.is_file():
        raise PixmixError(f"{path} not found: expected the extracted {suite.name} python batches under --data",
                          param="data_dir")
    for name in (*metrics.CORRUPTIONS, "labels"):
        path = data / suite.corrupted / f"{name}.npy"
        if not path.is_file():
            raise PixmixError(f"{path} not found: expected {suite.corrupted}/<corruption>.npy and labels.npy "
                              "under --data", param="data_dir")


# Suite, SUITES, PGD and DEFAULT_OOD_SAMPLES are defined in pixmix.evaluate.options and stay importable from here.
__all__ = ["DEFAULT_OOD_SAMPLES", "PGD", "SUITES", "Suite", "check_required", "evaluate", "run_measures", "summary"]
