"""What an evaluation runs on and with: the suites, the PGD attack's settings and a run's options.

The options are checked once, when :class:`EvalOptions` is built; every measure then trusts them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TypedDict

from pixmix.utils.errors import PixmixError
from pixmix.utils.runtime import plan_workers

DEFAULT_OOD_SAMPLES = 2000  # the reference: len(CIFAR test) // 5


class PgdSettings(TypedDict):
    """The L-inf PGD attack of the paper (spec section 7)."""

    epsilon: float
    steps: int
    step_size: float


PGD: PgdSettings = {"epsilon": 2 / 255, "steps": 20, "step_size": 0.5 / 255}


@dataclass(frozen=True)
class Suite:
    """A benchmark: its test set's name and class count, and the folders of its -C, -C-Bar and -P sets."""

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
    "imagenet": Suite("imagenet", 1000, "ImageNet-C", "ImageNet-C-Bar", "ImageNet-P"),
    # Table 13: anomaly detection only (pixmix.evaluate.places365); it has no -C, -C-Bar or -P sets.
    "places365": Suite("places365", 365, "", None, ""),
}


def suite_named(name: str) -> Suite:
    """The suite called ``name`` (one-line error listing the choices otherwise)."""
    if name not in SUITES:
        raise PixmixError(f"--suite must be one of {', '.join(SUITES)}, got {name!r}", param="suite")
    return SUITES[name]


def default_workers() -> int:
    """Image-decoding processes for folder datasets when none are asked for: one per usable CPU
    (:func:`~pixmix.utils.runtime.plan_workers`: affinity, cgroup quota, SLURM_CPUS_PER_TASK), at most 8."""
    return min(8, plan_workers(None)[0])


@dataclass(frozen=True)
class EvalOptions:
    """How one evaluation runs (see :func:`pixmix.evaluate.suites.evaluate` for each option's meaning).

    The field order is the order of ``results["settings"]``.
    """

    batch_size: int = 256
    seed: int = 0
    pgd_samples: int | None = None
    ood_samples: int = DEFAULT_OOD_SAMPLES
    limit: int | None = None
    drop_last_bin: bool = False  # no effect any more: both calibration figures are always reported
    workers: int = 0
    # ImageNet: AlexNet's ImageNet-P rates (a results.json of AlexNet) to normalise mFR / mT5D, and a folder
    # of out-of-class images for anomaly detection (default: ImageNet-O under the data folder).
    p_baseline: str | None = None
    ood_folder: str | None = None

    def __post_init__(self) -> None:
        # Messages name the command line's flags: `pixmix eval` is where users meet them.
        for param, value in (("batch_size", self.batch_size), ("ood_samples", self.ood_samples),
                             ("limit", self.limit), ("pgd_samples", self.pgd_samples)):
            if value is not None and value < 1:
                raise PixmixError(f"--{param.replace('_', '-')} must be >= 1, got {value}", param=param)
        if self.seed < 0:
            raise PixmixError(f"--seed must be >= 0, got {self.seed}", param="seed")
        if self.workers < 0:
            raise PixmixError(f"--workers must be >= 0, got {self.workers}", param="workers")

    def settings(self) -> dict[str, Any]:
        """The options as the results record them."""
        return asdict(self)


__all__ = ["DEFAULT_OOD_SAMPLES", "PGD", "SUITES", "EvalOptions", "PgdSettings", "Suite", "default_workers",
           "suite_named"]
