"""The Places365 suite (the paper's Table 13): ResNet-18 on Places365 as the in-distribution set, anomaly
detection against Gaussian, Rademacher, Blobs, Textures, SVHN, ImageNet and Places69.

Places365-Standard's validation set in its released layout under the data folder::

    places365_val.txt        # "Places365_val_00000001.jpg 165" per line: file name, class index (0..364)
    val_256/<file name>      # the 256 x 256 JPEGs (val_large/ works too)
    ood/{textures,svhn,imagenet,places}/**/<image>   # optional OOD folders (places: Places69)

Images are evaluated as ImageNet's (shorter side to 256/224 of the input size, centre crop). The suite
reports clean error and calibration (both ways), and per OOD set AUROC, AUPR and FPR95 (Outlier
Exposure's, ours beside) of the negative max softmax probability, averaged; no -C, -P or PGD (Table 13
has none).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pixmix.data.images import load_rgb
from pixmix.evaluate import measures, metrics, ood
from pixmix.evaluate.inputs import Feeder, subset
from pixmix.evaluate.net import Net
from pixmix.evaluate.options import EvalOptions, suite_named
from pixmix.utils.errors import PixmixError

LABELS_FILE = "places365_val.txt"
IMAGE_FOLDERS = ("val_256", "val_large")
CLASSES = 365


class Places365Val(Sequence[tuple[Image.Image, int]]):
    """Places365-Standard's validation images and labels, as ``(PIL RGB image, label)``, in the label file's order."""

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        labels_file = root / LABELS_FILE
        folder = next((root / name for name in IMAGE_FOLDERS if (root / name).is_dir()), None)
        if not labels_file.is_file() or folder is None:
            raise PixmixError(f"{root}: expected Places365's {LABELS_FILE} and val_256/ under --data",
                              param="data_dir")
        files, labels = [], []
        for number, line in enumerate(labels_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit() or Path(parts[0]).name != parts[0]:
                raise PixmixError(f"{labels_file}:{number}: expected '<file name> <class index>', got {line!r}",
                                  param="data_dir")
            files.append(folder / parts[0])
            labels.append(int(parts[1]))
        if not files:
            raise PixmixError(f"{labels_file} lists no images", param="data_dir")
        self.folder, self.files = folder, files
        self.labels = np.array(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:  # type: ignore[override]
        return load_rgb(self.files[index]), int(self.labels[index])


def check_required(data: Path) -> None:
    """Fail before any inference when the validation set is missing."""
    Places365Val(data)


def feeder(net: Net, options: EvalOptions) -> Feeder:
    """Places365's images reach the network as ImageNet's do (resize to 256/224 of the input, centre crop)."""
    return Feeder(net.size, options.batch_size, options.workers, True)


def clean(net: Net, data: Path, options: EvalOptions) -> tuple[dict[str, Any], np.ndarray]:
    """Error and both RMS calibration figures on the validation set; and the max softmax probabilities."""
    val = Places365Val(data)
    if val.labels.max() >= net.classes:
        raise PixmixError(f"{data / LABELS_FILE}: labels reach {int(val.labels.max())} but the checkpoint's model "
                          f"has {net.classes} classes; check --suite", param="suite")
    indices = subset(len(val), options.limit)
    out = net.run(feeder(net, options).batches(val, indices), len(indices), "clean")
    labels = val.labels[indices]
    rms = metrics.rms_calibration_errors(out.conf, out.pred == labels)
    return ({"error": float(np.mean(out.pred != labels) * 100), "samples": len(labels),
             "rms_calibration": rms["reference"], "rms_calibration_corrected": rms["corrected"]}, out.conf)


def anomaly(net: Net, data: Path, options: EvalOptions, in_confidences: np.ndarray,
            notes: list[str]) -> dict[str, Any]:
    """Table 13: AUROC, AUPR and FPR95 per OOD set (synthetic ones drawn at the input size from the seed,
    folder ones under ``data/ood/``: Textures, SVHN, ImageNet, Places69) and their means."""
    return measures.anomaly(net, data, suite_named("places365"), options, in_confidences, notes,
                            feed=feeder(net, options), sets=ood.PLACES365_FOLDER_SETS)


def run_measures(net: Net, data: Path, options: EvalOptions, notes: list[str],
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Clean error and calibration, then anomaly detection (Table 13)."""
    result, confidences = clean(net, data, options)
    log(f"clean error {result['error']:.2f}% on {result['samples']} images")
    out: dict[str, Any] = {"clean": result}
    out["anomaly"] = anomaly(net, data, options, confidences, notes)
    log(f"anomaly AUROC {out['anomaly']['auroc']:.2f}% over {len(out['anomaly']['per_set'])} sets")
    notes.append("places365 suite: clean and anomaly detection only (Table 13); no -C, -P or PGD")
    return out


__all__ = ["CLASSES", "IMAGE_FOLDERS", "LABELS_FILE", "Places365Val", "anomaly", "check_required", "clean",
           "feeder", "run_measures"]
