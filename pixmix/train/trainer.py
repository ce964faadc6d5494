"""``pixmix train``: the paper's recipes (spec section 6) on shard sets, single process or DDP under torchrun
(or ``srun``).

A run is a function of its :class:`TrainConfig` and data: the model is initialised from
``derive_seed(seed, init)``, every epoch re-seeds torch's global RNG from ``(seed, epoch, rank)`` (so
dropout draws do not depend on what ran before) and the loader's batches are a function of
``(seed, epoch, rank)``. Hence resuming from ``out/checkpoints/last.pt`` gives the same weights as
an uninterrupted run (exactly on the CPU), without saving any RNG state.

Data: PixMix presets read pre-generated PixMix shards (epoch ``e`` reads view ``e % views``) or
plain shards plus a mixing set (online PixMix, mixed on the training device by
:func:`pixmix.data.loader.finish_batch`); ``*-baseline`` presets read plain shards through the recipe's
base train transform only.

This module holds what a run is (:class:`TrainConfig`, its presets, its data plan) and :func:`train`, which
orchestrates the pieces: :mod:`~pixmix.train.context` (rank, world, device),
:mod:`~pixmix.train.loop` (:func:`train_one_epoch`, :func:`validate`) and
:mod:`~pixmix.train.checkpointing` (resume, checkpoints, ``log.jsonl``).
"""

from __future__ import annotations

import math
import os
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixmix.augment.config import PARTNERS
from pixmix.augment.recipes import RECIPES, Recipe, get_recipe
from pixmix.augment.transforms import SeededTransform
from pixmix.data.loader import ShardLoader
from pixmix.data.remote import resolved
from pixmix.data.shards.shard_set import ShardSet
from pixmix.models import arch_source, build_model, load_pretrained
from pixmix.train.checkpointing import (
    RESUMABLE_CHANGES,
    CheckpointSaver,
    RunFiles,
    config_differences,
    load_resumable,
    recipe_record,
    reconcile_log,
    resume,
)
from pixmix.train.context import TrainContext, close_context, open_context
from pixmix.train.errors import TrainError
from pixmix.train.iterative import IterativeOptions, IterativePool, load_pool, placeholder_pictures, save_pool
from pixmix.train.loop import (
    EpochStats,
    Learner,
    MidEpoch,
    Precision,
    cosine_factor,
    cosine_scheduler,
    epoch_seed,
    init_seed,
    train_one_epoch,
    validate,
    validation_error,
)
from pixmix.utils.errors import PixmixError
from pixmix.utils.runtime import limit_threads, usable_cpus

DEVICES = ("auto", "cpu", "cuda")
AMP_DTYPES = ("bfloat16", "float16")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's weights; validated once. ``batch_size`` is global."""

    preset: str
    arch: str
    recipe: str
    pixmix: bool
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    dropout: float = 0.0  # wrn40_4 only
    num_classes: int | None = None  # None: the shard set's class count
    pretrained: str | None = None  # a state dict or pixmix checkpoint to start from (ImageNet: expected)
    workers: int = 4
    seed: int = 0
    device: str = "auto"  # auto: cuda:LOCAL_RANK when CUDA is available, else cpu
    amp: bool = True  # autocast on CUDA (never on the CPU)
    amp_dtype: str = "bfloat16"  # float16 adds a GradScaler
    keep_every: int = 1  # keep checkpoints/epoch-NNN.pt every N epochs (and the last); 0: only last.pt
    checkpoint_every: int = 0  # also replace last.pt every N optimiser steps within an epoch (0: at epoch ends only)
    # Online PixMix's mixing partners (the paper's Table 5): "both" (PixMix), "augmented" (augmented inputs
    # only: no mixing set), "mixing" (the mixing set only). Pre-generated views carry their own.
    partners: str = "both"
    # BatchNorm statistics over the global batch under DDP on GPUs (small per-GPU batches, e.g. CIFAR's 128 on 8).
    sync_bn: bool = False
    # Online PixMix's k, beta and severity (None: the recipe's); pre-generated views carry their own.
    k: int | None = None
    beta: float | None = None
    severity: float | None = None
    # CutMix (the paper's Table 6): the probability per batch of applying it, lam ~ Beta(1, 1), the mixed loss;
    # on PixMix views too ("PixMix + CutMix"). The reference's CIFAR runs use 0.5.
    cutmix: float = 0.0
    # Iterative PixMix (the paper's Table 5): every N optimiser steps render FVis of the model being trained into a
    # rolling pool of mixing pictures (0: off); see pixmix.train.iterative.
    iterative_fvis_every: int = 0
    iterative_fvis_pool: int = 256
    iterative_fvis_steps: int = 64
    iterative_fvis_units: int = 16
    iterative_fvis_start_epoch: int = 0

    def __post_init__(self) -> None:
        self._check_names_and_counts()
        self._check_optimiser()
        self._check_run_options()
        self._check_pixmix()
        self._check_iterative()

    def _bad(self, name: str, want: str) -> TrainError:
        return TrainError(f"--{name.replace('_', '-')} must be {want}, got {getattr(self, name)!r}", param=name)

    def _check_names_and_counts(self) -> None:
        try:
            arch_source(self.arch)  # the project's own, torchvision's or timm's
        except PixmixError as exc:
            raise TrainError(str(exc), param="arch") from exc
        if self.recipe not in RECIPES:
            raise self._bad("recipe", f"one of {', '.join(sorted(RECIPES))}")
        for name in ("epochs", "batch_size"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise self._bad(name, "an integer >= 1")
        for name in ("workers", "seed", "keep_every", "checkpoint_every"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise self._bad(name, "an integer >= 0")

    def _check_optimiser(self) -> None:
        if not _is_real(self.lr) or self.lr <= 0:
            raise self._bad("lr", "a finite number > 0")
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            raise self._bad("weight_decay", "a finite number >= 0")
        if not _is_real(self.momentum) or not 0 <= self.momentum < 1:
            raise self._bad("momentum", "a number in [0, 1)")
        if self.nesterov and self.momentum == 0:
            raise TrainError("--nesterov needs --momentum > 0", param="momentum")
        if not _is_real(self.dropout) or not 0 <= self.dropout < 1:
            raise self._bad("dropout", "a number in [0, 1)")

    def _check_run_options(self) -> None:
        if self.num_classes is not None and (not _is_int(self.num_classes) or self.num_classes < 1):
            raise self._bad("num_classes", "an integer >= 1 or None")
        if self.pretrained is not None and (not isinstance(self.pretrained, str) or not self.pretrained):
            raise self._bad("pretrained", "a file path or None")
        if self.device not in DEVICES:
            raise self._bad("device", f"one of {', '.join(DEVICES)}")
        if self.amp_dtype not in AMP_DTYPES:
            raise self._bad("amp_dtype", f"one of {', '.join(AMP_DTYPES)}")
        if not isinstance(self.sync_bn, bool):
            raise self._bad("sync_bn", "true or false")
        if not _is_real(self.cutmix) or not 0 <= self.cutmix <= 1:
            raise self._bad("cutmix", "a probability in [0, 1]")

    def _check_pixmix(self) -> None:
        if self.partners not in PARTNERS:
            raise self._bad("partners", f"one of {', '.join(PARTNERS)}")
        if self.partners != "both" and not self.pixmix:
            raise TrainError(f"--partners {self.partners} needs a PixMix preset (not {self.preset})", param="partners")
        tuned = [n for n in ("k", "beta", "severity") if getattr(self, n) is not None]
        if tuned and not self.pixmix:
            raise TrainError(f"--{tuned[0]} needs a PixMix preset (not {self.preset})", param=tuned[0])
        try:
            self.training_recipe.pixmix()
        except ValueError as exc:  # the recipe's own check of k, beta, severity (a PixmixError or ValueError)
            raise TrainError(f"PixMix options: {exc}", param=getattr(exc, "param", None)) from exc

    def _check_iterative(self) -> None:
        for name in ("iterative_fvis_every", "iterative_fvis_start_epoch"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise self._bad(name, "an integer >= 0")
        for name in ("iterative_fvis_pool", "iterative_fvis_steps", "iterative_fvis_units"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise self._bad(name, "an integer >= 1")
        if not self.iterative_fvis_every:
            return
        if not self.pixmix:
            raise TrainError(f"--iterative-fvis-every needs a PixMix preset (not {self.preset})",
                             param="iterative_fvis_every")
        if self.partners == "augmented":
            raise TrainError("--iterative-fvis-every mixes with rendered pictures: not with --partners augmented",
                             param="iterative_fvis_every")
        if self.iterative_fvis_start_epoch >= self.epochs:
            raise TrainError(f"--iterative-fvis-start-epoch {self.iterative_fvis_start_epoch} is not before the "
                             f"last epoch ({self.epochs} epochs, counted from 0)", param="iterative_fvis_start_epoch")

    @property
    def iterative(self) -> IterativeOptions | None:
        """Iterative PixMix's options, or None when it is off."""
        if not self.iterative_fvis_every:
            return None
        return IterativeOptions(every=self.iterative_fvis_every, pool=self.iterative_fvis_pool,
                                steps=self.iterative_fvis_steps, units=self.iterative_fvis_units,
                                start_epoch=self.iterative_fvis_start_epoch)

    @property
    def training_recipe(self) -> Recipe:
        """The recipe with this run's PixMix partners (what the loader and finish_batch apply online)."""
        base = get_recipe(self.recipe)
        return replace(base, partners=self.partners, k=base.k if self.k is None else self.k,
                       beta=base.beta if self.beta is None else self.beta,
                       severity=base.severity if self.severity is None else self.severity)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return {"dropout": self.dropout} if self.arch in ("wrn40_4", "wrn16_4") else {}

    def to_json(self) -> dict[str, Any]:
        """``dataclasses.asdict``: plain JSON values only (stored in checkpoints, compared on resume)."""
        return asdict(self)


_CIFAR = TrainConfig(preset="cifar", arch="wrn40_4", recipe="cifar", pixmix=True, epochs=100, batch_size=128,
                     lr=0.1, weight_decay=5e-4, dropout=0.3, workers=4, keep_every=10)
# The paper fine-tunes a pretrained ResNet-50; batch 256 and lr 0.01 as in the reference code (512 in the paper).
_IMAGENET = TrainConfig(preset="imagenet", arch="resnet50", recipe="imagenet", pixmix=True, epochs=90,
                        batch_size=256, lr=0.01, weight_decay=5e-4, workers=8, keep_every=10)
# A tiny CNN on 32 px images (recipe cifar): trains an epoch of a few hundred images in seconds on a CPU.
_SMOKE = TrainConfig(preset="smoke", arch="smoke", recipe="cifar", pixmix=True, epochs=2, batch_size=32, lr=0.05,
                     workers=0)
# CPU-friendly and learns for real: WRN-16-4 (2.7M parameters) at 32 px, recipe cifar; a few thousand 32 px
# images train in minutes on a 2-core CPU (batch 64 gives enough steps on small sets; lr 0.05 stays stable on
# them without warm-up).
_SMALL = TrainConfig(preset="small", arch="wrn16_4", recipe="cifar", pixmix=True, epochs=12, batch_size=64, lr=0.05,
                     weight_decay=5e-4, workers=2)
# Table 13: ResNet-18 pretrained on Places365 (CSAILVision's resnet18_places365.pth.tar via --pretrained),
# fine-tuned 10 epochs with the ImageNet recipe at the paper's ImageNet fine-tuning lr (0.01, cosine; batch 256 as
# the imagenet preset) and the weight decay those weights were trained with (1e-4).
_PLACES365 = TrainConfig(preset="places365", arch="resnet18", recipe="imagenet", pixmix=True, epochs=10,
                         batch_size=256, lr=0.01, weight_decay=1e-4, workers=8, keep_every=1)
PRESETS: dict[str, TrainConfig] = {
    c.preset: c
    for base in (_CIFAR, _IMAGENET, _SMOKE, _SMALL, _PLACES365)
    for c in (base, replace(base, preset=f"{base.preset}-baseline", pixmix=False))
}


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """``PRESETS[name]`` with the given fields replaced (``None`` values keep the preset's)."""
    if name not in PRESETS:
        raise TrainError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}", param="preset")
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TrainError(f"unknown training option(s): {', '.join(unknown)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})



@dataclass(frozen=True)
class DataPlan:
    """How the training shards are read: the loader's mode and (views mode) its per-sample transform."""

    mode: str  # "views" or "online"
    kind: str  # the shard set's kind
    transform: SeededTransform | None


def plan_data(config: TrainConfig, shardset: ShardSet, mixset: str | Path | None) -> DataPlan:
    """Check that the preset fits the data; one-line :class:`TrainError` saying what to pass if not."""
    recipe = get_recipe(config.recipe)
    folder = shardset.folder
    if shardset.kind == "corrupted":
        raise TrainError(f"{folder}: a corrupted (-C) shard set is for evaluation; train on plain or pixmix shards")
    if not config.pixmix:
        if shardset.kind == "pixmix":
            raise TrainError(f"{folder}: preset {config.preset} trains without PixMix but these shards hold "
                             "pre-generated PixMix views; pass plain shards (`mixset shard` without --pixmix)")
        if mixset is not None:
            raise TrainError(f"preset {config.preset} trains without PixMix: drop --mixset "
                             f"(or use preset {config.preset.removesuffix('-baseline')})")
        return DataPlan("views", shardset.kind, recipe.train_transform())
    if shardset.kind == "pixmix":
        if config.iterative_fvis_every:
            raise TrainError(f"{folder}: --iterative-fvis-every mixes online: pass plain shards, not pre-generated "
                             "PixMix views", param="iterative_fvis_every")
        if mixset is not None:
            raise TrainError(f"{folder}: these shards hold pre-generated PixMix views already: drop --mixset "
                             "(or pass plain shards to mix online)")
        tuned = [f"--{n}" for n in ("partners", "k", "beta", "severity")
                 if getattr(config, n) is not None and (n != "partners" or config.partners != "both")]
        if tuned:
            raise TrainError(f"{folder}: these shards hold pre-generated PixMix views (made with their own "
                             f"`mixset shard` options): drop {', '.join(tuned)}, or pass plain shards to mix online")
        stored = shardset.config.get("recipe", {}).get("name")
        if stored is not None and stored != recipe.name:
            raise TrainError(f"{folder}: PixMix views made with the {stored} recipe, preset {config.preset} "
                             f"uses {recipe.name}")
        return DataPlan("views", "pixmix", None)
    if mixset is None and config.iterative_fvis_every:
        if config.iterative_fvis_start_epoch:
            raise TrainError("--iterative-fvis-start-epoch mixes with a static set until then: pass --mixset DIR",
                             param="iterative_fvis_start_epoch")
        return DataPlan("online", "plain", None)  # Iterative PixMix: the first render is the first pool
    if mixset is None and config.partners == "augmented":
        return DataPlan("online", "plain", None)  # mixing with augmented inputs only: no mixing set
    if mixset is None:
        raise TrainError(f"{folder}: plain shards need --mixset DIR for online PixMix (a `mixset build` folder), "
                         f"or pass pre-generated PixMix shards (`mixset shard --pixmix`), or use preset "
                         f"{config.preset}-baseline")
    return DataPlan("online", "plain", None)


def make_train_loader(
    config: TrainConfig, shards: str | Path, plan: DataPlan, *, mixset: str | Path | None, rank: int,
    world_size: int, batch_size: int,
) -> ShardLoader:
    """The training loader of one rank (``batch_size``: per rank)."""
    pictures: Any = mixset
    if plan.mode == "online" and mixset is None and config.iterative_fvis_every:
        pictures = placeholder_pictures()  # replaced by the pool's pictures on the device
    return ShardLoader(shards, batch_size=batch_size, seed=config.seed, rank=rank, world_size=world_size,
                       num_workers=config.workers, mode=plan.mode, mixset=pictures if plan.mode == "online" else None,
                       recipe=config.training_recipe, transform=plan.transform, drop_last=True, shuffle=True)


def make_val_loader(
    config: TrainConfig, val_shards: str | Path, *, rank: int, world_size: int, batch_size: int
) -> ShardLoader:
    """Evaluation order (listed shards, padded last batch marked ``repeat``), the recipe's test transform."""
    kind = ShardSet.load(val_shards).kind
    transform = get_recipe(config.recipe).test_transform() if kind in ("plain", "corrupted") else None
    return ShardLoader(val_shards, batch_size=batch_size, seed=config.seed, rank=rank, world_size=world_size,
                       num_workers=config.workers, mode="views", recipe=config.recipe, transform=transform,
                       drop_last=False, shuffle=False)


def data_record(shards: str | Path, plan: DataPlan, mixset: str | Path | None) -> dict[str, Any]:
    """The data a checkpoint records (a resume must read the same kind, mode, sample count and mixing set)."""
    return {"shards": resolved(shards), "kind": plan.kind, "mode": plan.mode,
            "mixset": resolved(mixset) if mixset is not None else None,  # a local path, or a URL as given
            "samples": ShardSet.load(shards).samples}


# --- training ------------------------------------------------------------------------------------


@dataclass
class TrainSummary:
    """What a call of :func:`train` did."""

    out: Path
    checkpoint: Path
    epochs_completed: int
    epochs: int
    step: int
    resumed_from: int | None  # the epochs the checkpoint held when this call resumed it
    seconds: float
    records: list[dict[str, Any]] = field(default_factory=list)  # this call's epochs

    @property
    def final(self) -> dict[str, Any] | None:
        return self.records[-1] if self.records else None


@dataclass(frozen=True)
class _Run:
    """One call of :func:`train` once it is set up: what its epochs need."""

    config: TrainConfig
    ctx: TrainContext
    shards: str | Path
    plan: DataPlan
    loader: ShardLoader
    val_loader: ShardLoader | None
    learner: Learner
    saver: CheckpointSaver
    say: Callable[[str], None]
    progress: bool
    pool: IterativePool | None = None  # Iterative PixMix
    done: list[dict[str, Any]] = field(default_factory=list)  # the log record of the last completed epoch


def train(
    config: TrainConfig,
    shards: str | Path,
    out: str | Path,
    mixset: str | Path | None = None,
    val_shards: str | Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    stop_after_epochs: int | None = None,
) -> TrainSummary:
    """Train (or resume) ``config`` on ``shards``; checkpoints and ``log.jsonl`` under ``out``.

    Under torchrun or ``srun`` (world size > 1) every rank calls this; rank 0 writes and logs.
    ``stop_after_epochs``: return once that many epochs are complete (as if interrupted there).
    """
    started = time.perf_counter()
    if stop_after_epochs is not None and stop_after_epochs < 0:
        raise TrainError(f"stop_after_epochs must be >= 0, got {stop_after_epochs}", param="stop_after_epochs")
    ctx = open_context(config.device)
    try:
        # In the process group: rank 0 reads each manifest and shares it (pixmix.data.remote.once_per_job).
        shardset = ShardSet.load(shards)
        plan = plan_data(config, shardset, mixset)
        config, classes = _fit_classes(config, shardset, shards, val_shards)
        limit_threads(plan_threads(config.workers)[0])
        say = log if ctx.rank == 0 else _silent
        run, state = _set_up(config, ctx, shards, Path(out), plan, classes, mixset, val_shards, say, progress)
        start = _resume(run, state)
        mid = MidEpoch.from_state(state["mid_epoch"]) if state is not None and state.get("mid_epoch") else None
        _distribute(run.learner, config, ctx, say)
        say(_banner(run))
        last = config.epochs if stop_after_epochs is None else min(config.epochs, stop_after_epochs)
        records = [_epoch(run, epoch, mid if epoch == start else None) for epoch in range(start, last)]
        summary = TrainSummary(out=Path(out), checkpoint=run.saver.files.last, epochs_completed=start + len(records),
                               epochs=config.epochs, step=run.learner.step,
                               resumed_from=start if state is not None else None,
                               seconds=time.perf_counter() - started, records=records)
        say(_final_line(summary, config.preset))
        return summary
    finally:
        close_context(ctx)


def plan_threads(workers: int, cpus: int | None = None) -> tuple[int, int]:
    """``(main process threads, threads per loader worker)`` so that all of them fit the usable CPUs.

    Each DataLoader worker runs one torch thread (the DataLoader sets it); the main process (the model's
    forward and backward) keeps the rest, at least one. With no workers the main process has them all.
    """
    budget = usable_cpus() if cpus is None else max(1, cpus)
    if workers <= 0:
        return budget, 0
    return max(1, budget - workers), 1


def _silent(_: str) -> None:
    """The log of ranks other than 0."""


def _fit_classes(
    config: TrainConfig, shardset: ShardSet, shards: str | Path, val_shards: str | Path | None
) -> tuple[TrainConfig, list[str]]:
    """``config`` with its class count (default: the shard set's) and the classes; checks the validation set's."""
    classes = list(shardset.classes)
    if config.num_classes is None:
        config = replace(config, num_classes=len(classes))
    elif config.num_classes < len(classes):
        raise TrainError(f"--num-classes {config.num_classes} is fewer than the {len(classes)} classes of {shards}",
                         param="num_classes")
    if val_shards is not None and list(ShardSet.load(val_shards).classes) != classes:
        raise TrainError(f"{val_shards}: its classes differ from the training shards' ({shards})")
    return config, classes


def _set_up(
    config: TrainConfig, ctx: TrainContext, shards: str | Path, out: Path, plan: DataPlan, classes: list[str],
    mixset: str | Path | None, val_shards: str | Path | None, say: Callable[[str], None], progress: bool,
) -> tuple[_Run, dict[str, Any] | None]:
    """The loaders, the checkpoint to resume (if any), the model and its optimiser, and the saver."""
    loader, val_loader = _loaders(config, ctx, shards, plan, mixset, val_shards)
    files = RunFiles(out)
    data = data_record(shards, plan, mixset)
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    state = load_resumable(files, config.to_json(), data, say, defaults)
    model = _initial_model(config, len(classes), state, say)
    learner = _learner(config, model, ctx.device, total_steps=config.epochs * len(loader))
    spec = {"arch": config.arch, "num_classes": int(config.num_classes or len(classes)),
            "kwargs": config.model_kwargs}
    saver = CheckpointSaver(files, config.epochs, config.keep_every, model=spec, config=config.to_json(),
                            recipe=recipe_record(config.training_recipe), classes=classes, data=data)
    pool = _iterative_pool(config, ctx, static=mixset is not None, steps_per_epoch=len(loader))
    return _Run(config, ctx, shards, plan, loader, val_loader, learner, saver, say, progress, pool), state


def _iterative_pool(config: TrainConfig, ctx: TrainContext, *, static: bool, steps_per_epoch: int
                    ) -> IterativePool | None:
    """Iterative PixMix's pool of this rank (None when off): the recipe's image size, on the training device."""
    options = config.iterative
    if options is None:
        return None
    return IterativePool(options, seed=config.seed, image_size=config.training_recipe.image_size,
                         start_step=options.start_epoch * steps_per_epoch, static=static, rank=ctx.rank,
                         world_size=ctx.world_size, device=ctx.device)


def _pool_file(run: _Run) -> Path:
    return run.saver.files.checkpoints / "iterative-pool.pt"


def _loaders(
    config: TrainConfig, ctx: TrainContext, shards: str | Path, plan: DataPlan, mixset: str | Path | None,
    val_shards: str | Path | None,
) -> tuple[ShardLoader, ShardLoader | None]:
    """This rank's training loader and (``val_shards``) validation loader, each with its share of the batch."""
    if config.batch_size % ctx.world_size:
        raise TrainError(f"--batch-size {config.batch_size} is not divisible by the {ctx.world_size} ranks",
                         param="batch_size")
    per_rank = config.batch_size // ctx.world_size
    loader = make_train_loader(config, shards, plan, mixset=mixset, rank=ctx.rank, world_size=ctx.world_size,
                               batch_size=per_rank)
    val_loader = (make_val_loader(config, val_shards, rank=ctx.rank, world_size=ctx.world_size, batch_size=per_rank)
                  if val_shards is not None else None)
    return loader, val_loader


def _initial_model(
    config: TrainConfig, class_count: int, state: dict[str, Any] | None, say: Callable[[str], None]
) -> nn.Module:
    """The network with the checkpoint's weights, else the pretrained ones, else a fresh initialisation."""
    # The same initial weights on every rank, whatever ran before in this process.
    torch.manual_seed(init_seed(config.seed))
    model = build_model(config.arch, int(config.num_classes or class_count), **config.model_kwargs)
    if state is not None:
        model.load_state_dict(state["model_state"])
    elif config.pretrained is not None:
        note = load_pretrained(model, config.pretrained)
        say(f"started from pretrained weights {config.pretrained}")
        if note is not None:
            say(note)
    if config.recipe == "imagenet" and config.pretrained is None and state is None:
        message = (f"preset {config.preset}: no --pretrained checkpoint given; the paper fine-tunes a pretrained "
                   f"{config.arch}, so this run trains from scratch and will not match its results")
        warnings.warn(message, stacklevel=2)
        say(f"WARNING: {message}")
    return model


def _learner(config: TrainConfig, model: nn.Module, device: torch.device, *, total_steps: int) -> Learner:
    """``model`` on ``device`` with SGD, the per-step cosine over ``total_steps`` and (float16) a scaler."""
    precision = Precision.of(device, config.amp, config.amp_dtype)
    memory_format = torch.channels_last if precision.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)  # type: ignore[call-overload]  # torch's stubs lack this form
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    scheduler = cosine_scheduler(optimizer, total_steps)
    use_scaler = precision.autocast and precision.dtype == torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    return Learner(model, model, optimizer, scheduler, scaler, precision)


def _resume(run: _Run, state: dict[str, Any] | None) -> int:
    """Continue from ``state`` (if any) and make the log match it; the epochs already done."""
    config, ctx, say, files = run.config, run.ctx, run.say, run.saver.files
    total_steps = config.epochs * len(run.loader)
    start = 0
    if state is not None:
        start = resume(state, run.learner, files, epochs=config.epochs, total_steps=total_steps, say=say)
        if run.pool is not None and not load_pool(_pool_file(run), run.pool, run.learner.step):
            say(f"note: no Iterative FVis pool saved at step {run.learner.step}: it is rendered again")
    metrics = state.get("metrics") if state is not None else None
    if metrics:
        run.done.append(metrics)
    if ctx.rank == 0:
        reconcile_log(files.log, start, metrics)
    mid = (state or {}).get("mid_epoch") or {}
    world = mid["position"]["world_size"] if mid else (metrics or {}).get("world_size")
    if world not in (None, ctx.world_size):
        say(f"note: resuming on {ctx.world_size} rank(s), the run so far used {world}: the rest of the epoch is "
            "re-split over the new ranks, so the data order (and per-rank BatchNorm statistics) differ from an "
            "uninterrupted run")
    return start


def _distribute(learner: Learner, config: TrainConfig, ctx: TrainContext, say: Callable[[str], None]) -> None:
    """Under DDP: synchronised BatchNorm (``sync_bn``, on GPUs) and the DDP wrapper the steps train through."""
    if not ctx.distributed:
        return
    if config.sync_bn:
        if ctx.device.type == "cuda":
            # Same parameter objects, so the optimizer built before still holds them.
            learner.model = nn.SyncBatchNorm.convert_sync_batchnorm(learner.model)
        else:
            say("note: --sync-bn needs CUDA; each CPU rank keeps its own BatchNorm statistics")
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    learner.net = nn.parallel.DistributedDataParallel(learner.model, device_ids=device_ids)


def _banner(run: _Run) -> str:
    config, ctx, precision = run.config, run.ctx, run.learner.precision
    return (f"training {config.preset}: {config.arch} on {run.shards} ({run.plan.kind} shards, "
            f"{run.plan.mode} mode), {config.epochs} epochs x {len(run.loader)} steps, batch {config.batch_size} "
            f"({ctx.world_size} x {config.batch_size // ctx.world_size}), lr {config.lr}, device {ctx.device}, "
            f"amp {precision.dtype if precision.autocast else 'off'}"
            + (f", CutMix p={config.cutmix}" if config.cutmix else "")
            + (f", Iterative FVis every {config.iterative_fvis_every} steps from epoch "
               f"{config.iterative_fvis_start_epoch + 1} (pool {config.iterative_fvis_pool}, "
               f"{config.iterative_fvis_units} units x {config.iterative_fvis_steps} steps)"
               if config.iterative_fvis_every else ""))


def _epoch(run: _Run, epoch: int, resume_at: MidEpoch | None = None) -> dict[str, Any]:
    """Train and validate ``epoch`` (0-based; ``resume_at``: from a mid-epoch checkpoint); rank 0 saves and logs
    it. Its ``log.jsonl`` record."""
    config, ctx, learner = run.config, run.ctx, run.learner
    recipe = config.training_recipe
    every = config.checkpoint_every
    stats = train_one_epoch(learner, run.loader, ctx, recipe, epoch=epoch, epochs=config.epochs, seed=config.seed,
                            progress=run.progress, cutmix=config.cutmix, pool=run.pool, resume_at=resume_at,
                            after_step=(lambda tally: _mid_epoch(run, epoch, tally)) if every else None)
    if not math.isfinite(stats.train_loss):
        raise TrainError(f"epoch {epoch + 1}: the training loss is {stats.train_loss}: lower --lr", param="lr")
    # (a validation loader without batches on this rank reports no error)
    val_error = validate(learner.model, run.val_loader, ctx, recipe, learner.precision) if run.val_loader else None
    record = _epoch_record(epoch, learner.step, stats, val_error, ctx.world_size,
                           view=run.loader.stream.records[0].view)
    if run.pool is not None:
        record.update(run.pool.record())
    if ctx.rank == 0:
        if run.pool is not None:  # before last.pt: a resume finds the pool of the step it resumes at
            save_pool(_pool_file(run), run.pool, learner.step)
        run.saver.save(learner, record)
        run.say(_epoch_line(record, config.epochs)
                + (f", {record['fvis_refreshes']} FVis refreshes so far" if run.pool is not None else ""))
    ctx.barrier()  # every rank sees the checkpoint before anyone moves on (or exits)
    run.done.append(record)
    return record


# A test hook: the process kills itself (SIGKILL, as a preemption would) once the mid-epoch checkpoint of this
# global step is on disk.
KILL_AFTER_STEP = "PIXMIX_TEST_KILL_AFTER_STEP"


def _mid_epoch(run: _Run, epoch: int, tally: Any) -> None:
    """After each step of ``epoch``: every ``checkpoint_every`` steps, all ranks gather the epoch's state and rank
    0 replaces ``last.pt`` with it (a collective call: every rank takes the same steps)."""
    learner, ctx = run.learner, run.ctx
    if learner.step % run.config.checkpoint_every:
        return
    mid = MidEpoch.gather(tally, run.loader, ctx)
    if ctx.rank == 0:
        if run.pool is not None:  # before last.pt, as at an epoch's end
            save_pool(_pool_file(run), run.pool, learner.step)
        run.saver.save_mid_epoch(learner, epoch, run.done[-1] if run.done else None, mid)
    ctx.barrier()
    if os.environ.get(KILL_AFTER_STEP) == str(learner.step):
        os.kill(os.getpid(), signal.SIGKILL)


def _epoch_record(
    epoch: int, step: int, stats: EpochStats, val_error: float | None, world_size: int, *, view: int
) -> dict[str, Any]:
    """The epoch's ``log.jsonl`` record (also the checkpoint's ``metrics``); ``view``: the shards' view it read
    (pixmix sets: ``epoch % views``)."""
    return {
        "epoch": epoch + 1, "step": step, "train_loss": stats.train_loss, "train_error": stats.train_error,
        "lr": stats.lr, "seconds": stats.seconds,
        "samples_per_s": stats.samples / stats.seconds if stats.seconds > 0 else None,
        "val_error": val_error, "samples": int(stats.samples), "substituted": int(stats.substituted),
        "errors": stats.errors, "batches_per_rank": stats.batches_per_rank, "world_size": world_size, "view": view,
    }


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    val = f", val error {record['val_error']:.4f}" if record["val_error"] is not None else ""
    subs = record["substituted"]
    return (f"epoch {record['epoch']}/{epochs}: loss {record['train_loss']:.4f}, train error "
            f"{record['train_error']:.4f}{val}, lr {record['lr']:.4g}, {record['seconds']:.1f}s "
            f"({record['samples_per_s'] or 0:.0f} samples/s)"
            + (f", {subs} substituted, {len(record['errors'])} loader errors" if subs else ""))


def _final_line(summary: TrainSummary, preset: str) -> str:
    done, epochs, last = summary.epochs_completed, summary.epochs, summary.checkpoint
    final = summary.final
    if final is None:
        return f"nothing to train: {last} holds {done}/{epochs} epochs"
    val = f", val error {final['val_error']:.4f}" if final["val_error"] is not None else ""
    return (f"trained {preset} to epoch {done}/{epochs} ({summary.step} steps) in {summary.seconds:.1f}s: "
            f"train loss {final['train_loss']:.4f}, train error {final['train_error']:.4f}{val}; checkpoint {last}")


# Names of the training pieces that were defined here before the split, kept importable from this module.
__all__ = ["AMP_DTYPES", "DEVICES", "PRESETS", "RESUMABLE_CHANGES", "DataPlan", "EpochStats", "Learner", "Precision",
           "TrainConfig", "TrainError", "TrainSummary", "config_differences", "cosine_factor", "cosine_scheduler",
           "data_record", "epoch_seed", "init_seed", "make_train_loader", "make_val_loader", "plan_data",
           "preset_config", "recipe_record", "train", "train_one_epoch", "validate", "validation_error"]
