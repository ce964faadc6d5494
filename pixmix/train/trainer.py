"""``pixmix train``: the paper's recipes (spec section 6) on shard sets, single process or DDP under torchrun.

A run is a function of its :class:`TrainConfig` and data: the model is initialised from
``derive_seed(seed, init)``, every epoch re-seeds torch's global RNG from ``(seed, epoch, rank)`` (so
dropout draws do not depend on what ran before) and the loader's batches are a function of
``(seed, epoch, rank)``. Hence resuming from ``out/checkpoints/last.pt`` gives the same weights as
an uninterrupted run (exactly on the CPU), without saving any RNG state.

Data: PixMix presets read pre-generated PixMix shards (epoch ``e`` reads view ``e % views``) or
plain shards plus a mixing set (online PixMix, mixed on the training device by
:func:`pixmix.data.loader.finish_batch`); ``*-baseline`` presets read plain shards through the recipe's
base train transform only.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pixmix.models import (
    ARCHS,
    build_model,
    load_checkpoint,
    load_pretrained,
    save_checkpoint,
)
from pixmix.augment.config import PARTNERS
from pixmix.augment.recipes import RECIPES, Recipe, get_recipe
from pixmix.utils.seeding import derive_seed
from pixmix.data.shards.shard_set import ShardSet
from pixmix.data.loader import ShardLoader, finish_batch
from pixmix.augment.transforms import SeededTransform

# Leading stream coordinates of the trainer's own seeds (apart from the loader's and the samples').
_INIT_STREAM = (1 << 40) + 16
_EPOCH_STREAM = (1 << 40) + 17
DEVICES = ("auto", "cpu", "cuda")
AMP_DTYPES = ("bfloat16", "float16")
# Fields that may differ when a run is resumed: more epochs extend it (the cosine is re-planned from
# there on); keep_every only changes which checkpoints are kept.
RESUMABLE_CHANGES = ("epochs", "keep_every")


class TrainError(ValueError):
    """A problem with the training options, the data or the output folder, explained in one line."""


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
    # Online PixMix's mixing partners (the paper's Table 5): "both" (PixMix), "augmented" (augmented inputs
    # only: no mixing set), "mixing" (the mixing set only). Pre-generated views carry their own.
    partners: str = "both"
    # BatchNorm statistics over the global batch under DDP on GPUs (small per-GPU batches, e.g. CIFAR's 128 on 8).
    sync_bn: bool = False
    # Online PixMix's k, beta and severity (None: the recipe's); pre-generated views carry their own.
    k: int | None = None
    beta: float | None = None
    severity: float | None = None

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> TrainError:
            return TrainError(f"--{name.replace('_', '-')} must be {want}, got {getattr(self, name)!r}")

        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_real(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if self.arch not in ARCHS:
            raise bad("arch", f"one of {', '.join(ARCHS)}")
        if self.recipe not in RECIPES:
            raise bad("recipe", f"one of {', '.join(sorted(RECIPES))}")
        for name in ("epochs", "batch_size"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        for name in ("workers", "seed", "keep_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "an integer >= 0")
        if not is_real(self.lr) or self.lr <= 0:
            raise bad("lr", "a finite number > 0")
        if not is_real(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", "a finite number >= 0")
        if not is_real(self.momentum) or not 0 <= self.momentum < 1:
            raise bad("momentum", "a number in [0, 1)")
        if self.nesterov and self.momentum == 0:
            raise TrainError("--nesterov needs --momentum > 0")
        if not is_real(self.dropout) or not 0 <= self.dropout < 1:
            raise bad("dropout", "a number in [0, 1)")
        if self.num_classes is not None and (not is_int(self.num_classes) or self.num_classes < 1):
            raise bad("num_classes", "an integer >= 1 or None")
        if self.pretrained is not None and (not isinstance(self.pretrained, str) or not self.pretrained):
            raise bad("pretrained", "a file path or None")
        if self.device not in DEVICES:
            raise bad("device", f"one of {', '.join(DEVICES)}")
        if self.amp_dtype not in AMP_DTYPES:
            raise bad("amp_dtype", f"one of {', '.join(AMP_DTYPES)}")
        if not isinstance(self.sync_bn, bool):
            raise bad("sync_bn", "true or false")
        if self.partners not in PARTNERS:
            raise bad("partners", f"one of {', '.join(PARTNERS)}")
        if self.partners != "both" and not self.pixmix:
            raise TrainError(f"--partners {self.partners} needs a PixMix preset (not {self.preset})")
        tuned = [n for n in ("k", "beta", "severity") if getattr(self, n) is not None]
        if tuned and not self.pixmix:
            raise TrainError(f"--{tuned[0]} needs a PixMix preset (not {self.preset})")
        try:
            self.training_recipe.pixmix()
        except ValueError as exc:
            raise TrainError(f"PixMix options: {exc}") from exc

    @property
    def training_recipe(self) -> Recipe:
        """The recipe with this run's PixMix partners (what the loader and finish_batch apply online)."""
        base = get_recipe(self.recipe)
        return replace(base, partners=self.partners, k=base.k if self.k is None else self.k,
                       beta=base.beta if self.beta is None else self.beta,
                       severity=base.severity if self.severity is None else self.severity)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return {"dropout": self.dropout} if self.arch == "wrn40_4" else {}

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
PRESETS: dict[str, TrainConfig] = {
    c.preset: c
    for base in (_CIFAR, _IMAGENET, _SMOKE)
    for c in (base, replace(base, preset=f"{base.preset}-baseline", pixmix=False))
}


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """``PRESETS[name]`` with the given fields replaced (``None`` values keep the preset's)."""
    if name not in PRESETS:
        raise TrainError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TrainError(f"unknown training option(s): {', '.join(unknown)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


# --- pure pieces ---------------------------------------------------------------------------------


def cosine_factor(step: int, total_steps: int) -> float:
    """The learning-rate multiplier at ``step``: 1 at step 0, 1/2 at the midpoint, 0 at ``total_steps``."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))


def cosine_scheduler(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step cosine annealing to 0 over ``total_steps`` (call ``step()`` after every optimiser step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total_steps))


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of torch's global RNG during ``epoch`` on ``rank`` (dropout and any other global draws)."""
    return derive_seed(seed, _EPOCH_STREAM, epoch, rank)


def init_seed(seed: int) -> int:
    """The seed of torch's global RNG while the model is initialised (the same on every rank)."""
    return derive_seed(seed, _INIT_STREAM)


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
    return ShardLoader(shards, batch_size=batch_size, seed=config.seed, rank=rank, world_size=world_size,
                       num_workers=config.workers, mode=plan.mode, mixset=mixset if plan.mode == "online" else None,
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


def config_differences(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """``"name: stored -> requested"`` for every field that differs, except :data:`RESUMABLE_CHANGES`."""
    names = sorted(set(stored) | set(requested))
    return [f"{n}: {stored.get(n)!r} -> {requested.get(n)!r}" for n in names
            if n not in RESUMABLE_CHANGES and stored.get(n) != requested.get(n)]


def recipe_record(recipe: Recipe) -> dict[str, Any]:
    return {"name": recipe.name, "mean": list(recipe.mean), "std": list(recipe.std), "image_size": recipe.image_size}


# --- distributed context -------------------------------------------------------------------------


@dataclass
class _Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # we initialised the process group, so we destroy it

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError as exc:
        raise TrainError(f"environment {name}={value!r} is not an integer") from exc


def _open_context(device: str) -> _Context:
    """Rank, world and device from torchrun's environment; the process group when WORLD_SIZE > 1."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: CUDA is not available here (use --device cpu or auto)")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        owns = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return _Context(rank, world, local, dev, owns)


def _gather(ctx: _Context, value: Any) -> list[Any]:
    if not ctx.distributed:
        return [value]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


def _sum(ctx: _Context, values: torch.Tensor) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(values)
    return values


# --- files ---------------------------------------------------------------------------------------


def _read_log(path: Path) -> list[dict[str, Any]]:
    """The records of ``log.jsonl``; a line a killed run left half-written is dropped (the checkpoint's
    own record is put back by :func:`_reconcile_log`), not fatal: it would stop rank 0 only and hang the rest."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _reconcile_log(path: Path, completed: int, last_metrics: dict[str, Any] | None) -> None:
    """Make ``log.jsonl`` hold exactly the records of the checkpoint's epochs.

    Records of epochs the checkpoint does not hold (a run killed between logging and saving) go;
    the checkpoint's own record comes back if it was lost.
    """
    records = [r for r in _read_log(path) if int(r.get("epoch", 0)) <= completed]
    if last_metrics is not None and not any(r.get("epoch") == completed for r in records):
        records.append(last_metrics)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)


def _append_log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _keep_copy(last: Path, kept: Path) -> None:
    """``kept`` as a hard link to ``last`` (no second write; ``last`` is replaced, not rewritten, later)."""
    tmp = kept.with_name(kept.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(last, tmp)
    except OSError:
        import shutil

        shutil.copyfile(last, tmp)
    tmp.replace(kept)


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

    Under torchrun (WORLD_SIZE > 1) every rank calls this; rank 0 writes and logs.
    ``stop_after_epochs``: return once that many epochs are complete (as if interrupted there).
    """
    started = time.perf_counter()
    out = Path(out)
    shardset = ShardSet.load(shards)
    plan = plan_data(config, shardset, mixset)
    classes = list(shardset.classes)
    if config.num_classes is None:
        config = replace(config, num_classes=len(classes))
    elif config.num_classes < len(classes):
        raise TrainError(f"--num-classes {config.num_classes} is fewer than the {len(classes)} classes of {shards}")
    if val_shards is not None and list(ShardSet.load(val_shards).classes) != classes:
        raise TrainError(f"{val_shards}: its classes differ from the training shards' ({shards})")
    if stop_after_epochs is not None and stop_after_epochs < 0:
        raise TrainError(f"stop_after_epochs must be >= 0, got {stop_after_epochs}")
    ctx = _open_context(config.device)
    try:
        return _train(config, ctx, shards, out, plan, classes, mixset, val_shards, log, progress,
                      stop_after_epochs, started)
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()


def _train(
    config: TrainConfig, ctx: _Context, shards: str | Path, out: Path, plan: DataPlan, classes: list[str],
    mixset: str | Path | None, val_shards: str | Path | None, log: Callable[[str], None], progress: bool,
    stop_after_epochs: int | None, started: float,
) -> TrainSummary:
    say = log if ctx.rank == 0 else (lambda _: None)
    device = ctx.device
    recipe = config.training_recipe
    if config.batch_size % ctx.world_size:
        raise TrainError(f"--batch-size {config.batch_size} is not divisible by the {ctx.world_size} ranks")
    per_rank = config.batch_size // ctx.world_size
    loader = make_train_loader(config, shards, plan, mixset=mixset, rank=ctx.rank, world_size=ctx.world_size,
                               batch_size=per_rank)
    val_loader = (make_val_loader(config, val_shards, rank=ctx.rank, world_size=ctx.world_size, batch_size=per_rank)
                  if val_shards is not None else None)
    steps_per_epoch = len(loader)
    total_steps = config.epochs * steps_per_epoch
    data_record = {"shards": str(Path(shards).resolve()), "kind": plan.kind, "mode": plan.mode,
                   "mixset": str(Path(mixset).resolve()) if mixset is not None else None,
                   "samples": ShardSet.load(shards).samples}

    checkpoints = out / "checkpoints"
    last_path = checkpoints / "last.pt"
    log_path = out / "log.jsonl"
    state = load_checkpoint(last_path) if last_path.exists() else None
    requested = config.to_json()
    if state is not None:
        diffs = config_differences(state["config"], requested)
        data_diffs = [f"{k}: {state['data'].get(k)!r} -> {data_record[k]!r}" for k in ("kind", "mode", "samples", "mixset")
                      if state.get("data", {}).get(k) != data_record[k]]
        if diffs or data_diffs:
            raise TrainError(f"{last_path} holds a run with other options ({'; '.join(diffs + data_diffs)}): "
                             "use a new --out (or the same options to resume)")
        if state["data"]["shards"] != data_record["shards"]:
            say(f"note: resuming with shards {data_record['shards']} (the run started on {state['data']['shards']})")

    # The same initial weights on every rank, whatever ran before in this process.
    torch.manual_seed(init_seed(config.seed))
    model = build_model(config.arch, int(config.num_classes or len(classes)), **config.model_kwargs)
    if state is not None:
        model.load_state_dict(state["model_state"])
    elif config.pretrained is not None:
        load_pretrained(model, config.pretrained)
        say(f"started from pretrained weights {config.pretrained}")
    if config.recipe == "imagenet" and config.pretrained is None and state is None:
        message = (f"preset {config.preset}: no --pretrained checkpoint given; the paper fine-tunes a pretrained "
                   "ResNet-50, so this run trains from scratch and will not match its results")
        warnings.warn(message, stacklevel=2)
        say(f"WARNING: {message}")
    channels_last = device.type == "cuda"  # faster convolutions under autocast on GPUs
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    scheduler = cosine_scheduler(optimizer, total_steps)
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.float16 if config.amp_dtype == "float16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None
    start_epoch, step = 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer_state"])
        scheduler.load_state_dict(state["scheduler_state"])
        if scaler is not None and state.get("scaler_state") is not None:
            scaler.load_state_dict(state["scaler_state"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        if state["config"]["epochs"] != config.epochs:
            say(f"note: {state['config']['epochs']} -> {config.epochs} epochs: the cosine schedule is re-planned "
                f"over {total_steps} steps from step {step}")
        # The lr of the next step under this run's schedule (the same value LambdaLR would compute).
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base * cosine_factor(step, total_steps)
        say(f"resumed {last_path} at epoch {start_epoch}/{config.epochs} (step {step})")
    if ctx.rank == 0:
        _reconcile_log(log_path, start_epoch, state.get("metrics") if state is not None else None)
    if state is not None and state.get("metrics", {}).get("world_size") not in (None, ctx.world_size):
        say(f"note: resuming on {ctx.world_size} rank(s), the run so far used {state['metrics']['world_size']}: "
            "the data order (and per-rank BatchNorm statistics) differ from an uninterrupted run")
    if config.sync_bn and ctx.distributed:
        if device.type == "cuda":
            # Same parameter objects, so the optimizer built above still holds them.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            say("note: --sync-bn needs CUDA; each CPU rank keeps its own BatchNorm statistics")
    net: nn.Module = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    say(f"training {config.preset}: {config.arch} on {shards} ({plan.kind} shards, {plan.mode} mode), "
        f"{config.epochs} epochs x {steps_per_epoch} steps, batch {config.batch_size} "
        f"({ctx.world_size} x {per_rank}), lr {config.lr}, device {device}, "
        f"amp {amp_dtype if use_amp else 'off'}")
    records: list[dict[str, Any]] = []
    resumed_from = start_epoch if state is not None else None
    last_epoch = config.epochs if stop_after_epochs is None else min(config.epochs, stop_after_epochs)
    for epoch in range(start_epoch, last_epoch):
        loader.set_epoch(epoch)
        torch.manual_seed(epoch_seed(config.seed, epoch, ctx.rank))
        net.train()
        tick = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        wrong = torch.zeros((), dtype=torch.int64, device=device)
        seen = substituted = batches = 0
        errors: list[str] = []
        lr = optimizer.param_groups[0]["lr"]
        bar = None
        if progress and ctx.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
                       dynamic_ncols=True, leave=False)
        for batch in loader:
            images, labels = finish_batch(batch, device, recipe)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = net(images)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            batches += 1
            seen += len(batch)
            substituted += batch.substituted
            errors.extend(batch.errors)
            loss_sum += loss.detach().double() * len(batch)
            wrong += (logits.detach().argmax(1) != labels).sum()
            if bar is not None:
                bar.update()
                if batches % 20 == 1:
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4g}")
        if bar is not None:
            bar.close()
        totals = _sum(ctx, torch.stack([loss_sum, wrong.double(),
                                        torch.tensor(float(seen), dtype=torch.float64, device=device),
                                        torch.tensor(float(substituted), dtype=torch.float64, device=device)]))
        seconds = time.perf_counter() - tick
        loss_total, wrong_total, samples, subs = totals.tolist()
        per_rank_info = _gather(ctx, (batches, errors))
        train_loss = loss_total / max(samples, 1)
        if not math.isfinite(train_loss):
            raise TrainError(f"epoch {epoch + 1}: the training loss is {train_loss}: lower --lr")
        val_error = validation_error(model, val_loader, ctx, recipe, use_amp, amp_dtype, channels_last) if val_loader else None
        record = {
            "epoch": epoch + 1, "step": step, "train_loss": train_loss, "train_error": wrong_total / max(samples, 1),
            "lr": lr, "seconds": seconds, "samples_per_s": samples / seconds if seconds > 0 else None,
            "val_error": val_error, "samples": int(samples), "substituted": int(subs),
            "errors": [e for _, errs in per_rank_info for e in errs],
            "batches_per_rank": [b for b, _ in per_rank_info], "world_size": ctx.world_size,
            "view": loader.stream.records[0].view,  # the shards' view this epoch read (pixmix sets: epoch % views)
        }
        records.append(record)
        if ctx.rank == 0:
            payload = {
                "model": {"arch": config.arch, "num_classes": int(config.num_classes or len(classes)),
                          "kwargs": config.model_kwargs},
                "model_state": model.state_dict(),
                "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(),
                "scaler_state": scaler.state_dict() if scaler is not None else None,
                "epoch": epoch + 1, "step": step, "config": requested, "recipe": recipe_record(recipe),
                "classes": classes, "metrics": record, "data": data_record,
            }
            save_checkpoint(last_path, payload)
            if config.keep_every and (epoch + 1 == config.epochs or (epoch + 1) % config.keep_every == 0):
                _keep_copy(last_path, checkpoints / f"epoch-{epoch + 1:03d}.pt")
            _append_log(log_path, record)  # after the checkpoint: a resume trims records it does not hold
            val = f", val error {val_error:.4f}" if val_error is not None else ""
            say(f"epoch {epoch + 1}/{config.epochs}: loss {train_loss:.4f}, train error "
                f"{record['train_error']:.4f}{val}, lr {lr:.4g}, {seconds:.1f}s "
                f"({record['samples_per_s'] or 0:.0f} samples/s)"
                + (f", {int(subs)} substituted, {len(record['errors'])} loader errors" if subs else ""))
        ctx.barrier()  # every rank sees the checkpoint before anyone moves on (or exits)
        start_epoch = epoch + 1

    summary = TrainSummary(out=out, checkpoint=last_path, epochs_completed=start_epoch, epochs=config.epochs,
                           step=step, resumed_from=resumed_from, seconds=time.perf_counter() - started,
                           records=records)
    final = summary.final
    if final is None:
        say(f"nothing to train: {last_path} holds {start_epoch}/{config.epochs} epochs")
    else:
        val = f", val error {final['val_error']:.4f}" if final["val_error"] is not None else ""
        say(f"trained {config.preset} to epoch {start_epoch}/{config.epochs} ({step} steps) in "
            f"{summary.seconds:.1f}s: train loss {final['train_loss']:.4f}, train error "
            f"{final['train_error']:.4f}{val}; checkpoint {last_path}")
    return summary


def validation_error(
    model: nn.Module, loader: ShardLoader, ctx: _Context, recipe: Recipe, use_amp: bool, amp_dtype: torch.dtype,
    channels_last: bool,
) -> float:
    """Top-1 error over the loader's samples on all ranks (padding and substitutes left out)."""
    was_training = model.training
    model.eval()
    wrong = torch.zeros((), dtype=torch.float64, device=ctx.device)
    count = torch.zeros((), dtype=torch.float64, device=ctx.device)
    with torch.no_grad():
        for batch in loader:
            images, labels = finish_batch(batch, ctx.device, recipe)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=use_amp):
                logits = model(images)
            keep = (~batch.repeat).to(ctx.device)
            wrong += ((logits.argmax(1) != labels) & keep).sum()
            count += keep.sum()
    model.train(was_training)
    wrong_total, total = _sum(ctx, torch.stack([wrong, count])).tolist()
    return wrong_total / total if total else float("nan")


__all__ = ["AMP_DTYPES", "DEVICES", "PRESETS", "RESUMABLE_CHANGES", "DataPlan", "TrainConfig", "TrainError",
           "TrainSummary", "config_differences", "cosine_factor", "cosine_scheduler", "epoch_seed", "validation_error",
           "init_seed", "make_train_loader", "make_val_loader", "plan_data", "preset_config", "recipe_record",
           "train"]
