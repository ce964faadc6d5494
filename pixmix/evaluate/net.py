"""The evaluated model: a checkpoint's network on a device, with its recipe's normalisation; batched
inference and the PGD attack in fp32."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixmix.evaluate.attacks import pgd_linf
from pixmix.evaluate.options import PGD, Suite
from pixmix.models import model_from_checkpoint
from pixmix.utils.distributed import resolve_device
from pixmix.utils.errors import PixmixError


@dataclass
class Outputs:
    """Per image: predicted class, max softmax probability and (when asked) the top-5 classes."""

    pred: np.ndarray
    conf: np.ndarray
    top5: np.ndarray | None = None


class Net:
    """A model of ``classes`` classes and input ``size`` on a device, with its normalisation; batched inference."""

    def __init__(self, model: torch.nn.Module, mean: Sequence[float], std: Sequence[float], size: int, classes: int,
                 device: torch.device, progress: bool) -> None:
        self.model, self.device, self.progress = model.to(device).eval(), device, progress
        self.size, self.classes = size, classes
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
        """Predictions and confidences of every image of ``batches`` (``total`` of them, for the progress bar)."""
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
            raise PixmixError(f"{desc}: no images to evaluate")
        return Outputs(torch.cat(preds).numpy().astype(np.int64), torch.cat(confs).numpy().astype(np.float64),
                       torch.cat(tops).numpy().astype(np.int64) if top5 else None)

    def pgd_predictions(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], total: int,
                        generator: torch.Generator) -> np.ndarray:
        """Predictions on PGD adversarial versions of the labelled ``batches``; random starts from ``generator``."""
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


def load_net(checkpoint: str | Path, suite: Suite, device: str, progress: bool,
             notes: list[str]) -> tuple[Net, dict[str, Any], dict[str, Any]]:
    """The checkpoint's network on ``device``, its saved state and the recipe used (a note when defaulted).

    One-line errors: a CIFAR checkpoint whose class count is not the suite's, a device that is not one.
    """
    # Building the network draws its (then overwritten) initial weights from the global RNG: leave it as it was.
    with torch.random.fork_rng(devices=[]):
        model, state = model_from_checkpoint(checkpoint)
    recipe = recipe_of(state, suite, notes)
    classes = int(state["model"]["num_classes"])
    if not suite.is_imagenet and classes != suite.classes:
        raise PixmixError(f"{checkpoint}: its model has {classes} classes but --suite {suite.name} has "
                          f"{suite.classes}", param="suite")
    net = Net(model, recipe["mean"], recipe["std"], recipe["image_size"], classes, resolve_device(device), progress)
    return net, state, recipe


def recipe_of(state: dict[str, Any], suite: Suite, notes: list[str]) -> dict[str, Any]:
    """The checkpoint's recipe (name, mean, std, image size), else the suite's default with a note."""
    from pixmix.augment.recipes import CIFAR as CIFAR_RECIPE
    from pixmix.augment.recipes import IMAGENET

    default = IMAGENET if suite.is_imagenet else CIFAR_RECIPE
    recipe = state.get("recipe")
    if isinstance(recipe, dict) and {"mean", "std"} <= set(recipe):
        return {"name": recipe.get("name", default.name), "mean": [float(v) for v in recipe["mean"]],
                "std": [float(v) for v in recipe["std"]],
                "image_size": int(recipe.get("image_size", default.image_size))}
    notes.append(f"checkpoint has no recipe: used the {default.name} recipe's mean, std and image size")
    return {"name": default.name, "mean": list(default.mean), "std": list(default.std),
            "image_size": default.image_size}


__all__ = ["Net", "Outputs", "load_net", "recipe_of"]
