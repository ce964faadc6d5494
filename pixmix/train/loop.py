"""The inner loop of ``pixmix train``: the per-step cosine schedule, the trainer's seeds, one training
epoch (:func:`train_one_epoch`) and the validation error (:func:`validate`).

An epoch re-seeds torch's global RNG from ``(seed, epoch, rank)`` before its first step, so dropout draws do
not depend on what ran before: a resumed run replays them exactly. A mid-epoch checkpoint holds each rank's RNG
state and the epoch's running sums (:class:`MidEpoch`), so a run resumed there continues them exactly too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pixmix.augment.cutmix import CutMixBox, apply_cutmix, cutmix_loss, sample_cutmix
from pixmix.augment.recipes import Recipe
from pixmix.data.loader import EpochPosition, ShardLoader, finish_batch
from pixmix.train.context import TrainContext
from pixmix.utils.seeding import derive_seed

if TYPE_CHECKING:
    from pixmix.train.iterative import IterativePool

# Leading stream coordinates of the trainer's own seeds (apart from the loader's and the samples').
_INIT_STREAM = (1 << 40) + 16
_EPOCH_STREAM = (1 << 40) + 17
_CUTMIX_STREAM = (1 << 40) + 0xC07  # CutMix's per-batch draws


def cosine_factor(step: int, total_steps: int) -> float:
    """The learning-rate multiplier at ``step``: 1 at step 0, 1/2 at the midpoint, 0 at ``total_steps``."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))


def cosine_scheduler(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step cosine annealing to 0 over ``total_steps`` (call ``step()`` after every optimiser step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total_steps))


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of torch's global RNG during ``epoch`` on ``rank`` (dropout and any other global draws)."""
    return derive_seed(seed, _EPOCH_STREAM, epoch, rank)


def cutmix_rng(seed: int, epoch: int, rank: int, step: int) -> np.random.Generator:
    """The generator of CutMix's draws for batch ``step`` (0-based, within the epoch) of ``epoch`` on ``rank``:
    a pure function of these, so the same seed gives the same boxes, also after a resume."""
    return np.random.default_rng(derive_seed(seed, _CUTMIX_STREAM, epoch, rank, step))


def maybe_cutmix(
    images: torch.Tensor, prob: float, seed: int, epoch: int, rank: int, step: int
) -> tuple[torch.Tensor, CutMixBox | None]:
    """``images`` CutMixed with probability ``prob`` from :func:`cutmix_rng` (0: untouched, no draws), and the box."""
    if prob <= 0:
        return images, None
    rng = cutmix_rng(seed, epoch, rank, step)
    box = sample_cutmix(images.shape[0], images.shape[-2], images.shape[-1], prob=prob, rng=rng)
    return (images, None) if box is None else (apply_cutmix(images, box), box)


def init_seed(seed: int) -> int:
    """The seed of torch's global RNG while the model is initialised (the same on every rank)."""
    return derive_seed(seed, _INIT_STREAM)


@dataclass(frozen=True)
class Precision:
    """How forward passes run: autocast (on CUDA only) in ``dtype``, channels-last inputs (on GPUs)."""

    autocast: bool
    dtype: torch.dtype
    channels_last: bool

    @classmethod
    def of(cls, device: torch.device, amp: bool, amp_dtype: str) -> Precision:
        """The precision of a run on ``device`` with its ``amp`` options (autocast never on the CPU)."""
        on_cuda = device.type == "cuda"  # channels-last: faster convolutions under autocast on GPUs
        return cls(amp and on_cuda, torch.float16 if amp_dtype == "float16" else torch.bfloat16, on_cuda)

    def forward(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``net(images)`` in this precision."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=self.dtype, enabled=self.autocast):
            return net(images)


@dataclass
class Learner:
    """What a training step updates: ``net`` (the model, or its DDP wrapper) through the optimiser, the
    per-step schedule and (float16 autocast) the gradient scaler; ``step`` counts the optimiser steps."""

    model: nn.Module  # unwrapped: what is validated and saved
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    precision: Precision
    step: int = 0

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return float(self.optimizer.param_groups[0]["lr"])

    def update(self, loss: torch.Tensor) -> float:
        """One optimiser step on ``loss`` and one schedule step; the learning rate that step used."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        lr = self.lr
        self.scheduler.step()
        self.step += 1
        return lr


@dataclass(frozen=True)
class EpochStats:
    """One training epoch over all ranks: ``samples`` seen, mean loss and top-1 error on the augmented inputs,
    the lr of its last step; per-rank batches and loader errors in rank order."""

    train_loss: float
    train_error: float
    lr: float
    seconds: float
    samples: float
    substituted: float
    errors: list[str]
    batches_per_rank: list[int]


@dataclass
class _Tally:
    """Running sums of one rank's epoch (loss and errors on the device: no sync per step)."""

    device: torch.device
    loss_sum: torch.Tensor = field(init=False)
    wrong: torch.Tensor = field(init=False)
    seen: int = 0
    substituted: int = 0
    batches: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.wrong = torch.zeros((), dtype=torch.int64, device=self.device)

    def add(self, batch: Any, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.batches += 1
        self.seen += len(batch)
        self.substituted += batch.substituted
        self.errors.extend(batch.errors)
        self.loss_sum += loss.detach().double() * len(batch)
        self.wrong += (logits.detach().argmax(1) != labels).sum()

    def totals(self, ctx: TrainContext) -> list[float]:
        """``[loss sum, wrong, samples, substituted]`` over all ranks."""
        counts = [torch.tensor(float(n), dtype=torch.float64, device=self.device)
                  for n in (self.seen, self.substituted)]
        return ctx.sum(torch.stack([self.loss_sum, self.wrong.double(), *counts])).tolist()


@dataclass(frozen=True)
class MidEpoch:
    """What a mid-epoch checkpoint holds of the epoch in progress: the loader's ``position`` (its ``step``: batches
    done on every rank), each rank's running sums (loss, wrong, samples, substituted, errors) and RNG states."""

    position: EpochPosition
    tallies: list[tuple[float, int, int, int, list[str]]]
    rng: list[torch.Tensor]
    cuda_rng: list[torch.Tensor] | None

    @classmethod
    def gather(cls, tally: _Tally, loader: ShardLoader, ctx: TrainContext) -> MidEpoch:
        """The state of every rank after ``tally.batches`` steps (a collective call: all ranks together)."""
        cuda = torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda" else None
        sums = (float(tally.loss_sum.item()), int(tally.wrong.item()), tally.seen, tally.substituted,
                list(tally.errors))
        ranks = ctx.gather((sums, torch.get_rng_state(), cuda))
        return cls(loader.position(tally.batches), [r[0] for r in ranks], [r[1] for r in ranks],
                   None if cuda is None else [r[2] for r in ranks])

    def to_state(self) -> dict[str, Any]:
        """Plain values and tensors (the checkpoint loads with ``weights_only=True``)."""
        return {"position": self.position.to_state(), "tallies": [list(t) for t in self.tallies], "rng": self.rng,
                "cuda_rng": self.cuda_rng}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MidEpoch:
        """The inverse of :meth:`to_state`."""
        tallies = [(float(t[0]), int(t[1]), int(t[2]), int(t[3]), list(t[4])) for t in state["tallies"]]
        return cls(EpochPosition.from_state(state["position"]), tallies, list(state["rng"]), state["cuda_rng"])

    def restore(self, tally: _Tally, ctx: TrainContext, seed: int) -> None:
        """Continue ``tally`` and this rank's RNG: on the same ranks each its own (the same sums and draws as
        without the stop); on another number, rank 0 carries the sums of all and the RNG is seeded from ``(seed,
        epoch, rank, step)`` (another split: the draws differ anyway)."""
        step = self.position.step
        tally.batches = step
        same = len(self.tallies) == ctx.world_size
        if same or ctx.rank == 0:
            mine = [self.tallies[ctx.rank]] if same else self.tallies
            tally.loss_sum += sum(t[0] for t in mine)
            tally.wrong += sum(t[1] for t in mine)
            tally.seen, tally.substituted = sum(t[2] for t in mine), sum(t[3] for t in mine)
            tally.errors = [e for t in mine for e in t[4]]
        if not same:
            torch.manual_seed(derive_seed(seed, _EPOCH_STREAM, self.position.epoch, ctx.rank, step))
            return
        torch.set_rng_state(self.rng[ctx.rank])
        if self.cuda_rng is not None and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(self.cuda_rng[ctx.rank], ctx.device)


def train_one_epoch(
    learner: Learner, loader: ShardLoader, ctx: TrainContext, recipe: Recipe, *, epoch: int, epochs: int, seed: int,
    progress: bool = False, cutmix: float = 0.0, pool: IterativePool | None = None, resume_at: MidEpoch | None = None,
    after_step: Callable[[_Tally], None] | None = None,
) -> EpochStats:
    """Train ``epoch`` (0-based) of ``epochs`` on this rank's batches; the statistics of all ranks.

    ``cutmix``: the probability per batch of CutMix on the (PixMix or base-augmented) inputs, with the mixed
    loss; the training error counts against each image's own label. ``pool``: Iterative PixMix's pool, refreshed
    from the model before the steps its schedule names and the source of online PixMix's mixing pictures.
    ``resume_at``: continue the epoch from a mid-epoch checkpoint. ``after_step``: called with the running tally
    after every step but the epoch's last (on every rank: a mid-epoch checkpoint).
    """
    loader.set_epoch(epoch, resume_at.position if resume_at is not None else None)
    torch.manual_seed(epoch_seed(seed, epoch, ctx.rank))
    learner.net.train()
    tick = time.perf_counter()
    tally = _Tally(ctx.device)
    if resume_at is not None:
        resume_at.restore(tally, ctx, seed)
    end = tally.batches + len(loader)
    lr = learner.lr  # an epoch without batches reports the lr it would have used
    bar = _progress_bar(len(loader), f"epoch {epoch + 1}/{epochs}") if progress and ctx.rank == 0 else None
    for batch in loader:
        images, labels = finish_batch(batch, ctx.device, recipe, mixing=_pool_partners(pool, learner, len(batch)))
        images, box = maybe_cutmix(images, cutmix, seed, epoch, ctx.rank, tally.batches)
        logits = learner.precision.forward(learner.net, images)
        loss = cutmix_loss(logits.float(), labels, box)
        lr = learner.update(loss)
        tally.add(batch, loss, logits, labels)
        if after_step is not None and tally.batches < end:
            after_step(tally)
        if bar is not None:
            bar.update()
            if tally.batches % 20 == 1:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4g}")
    if bar is not None:
        bar.close()
    loss_total, wrong_total, samples, substituted = tally.totals(ctx)
    seconds = time.perf_counter() - tick
    per_rank = ctx.gather((tally.batches, tally.errors))
    return EpochStats(train_loss=loss_total / max(samples, 1), train_error=wrong_total / max(samples, 1), lr=lr,
                      seconds=seconds, samples=samples, substituted=substituted,
                      errors=[e for _, errs in per_rank for e in errs], batches_per_rank=[b for b, _ in per_rank])


def _pool_partners(pool: IterativePool | None, learner: Learner, count: int) -> torch.Tensor | None:
    """The batch's mixing pictures from Iterative PixMix's pool (refreshed first when due), or None."""
    if pool is None:
        return None
    pool.maybe_refresh(learner.model, learner.step)
    return pool.partners(count, learner.step)


def _progress_bar(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=False)


def validate(model: nn.Module, loader: ShardLoader, ctx: TrainContext, recipe: Recipe, precision: Precision) -> float:
    """Top-1 error over the loader's samples on all ranks (padding and substitutes left out)."""
    was_training = model.training
    model.eval()
    wrong = torch.zeros((), dtype=torch.float64, device=ctx.device)
    count = torch.zeros((), dtype=torch.float64, device=ctx.device)
    with torch.no_grad():
        for batch in loader:
            images, labels = finish_batch(batch, ctx.device, recipe)
            logits = precision.forward(model, images)
            keep = (~batch.repeat).to(ctx.device)
            wrong += ((logits.argmax(1) != labels) & keep).sum()
            count += keep.sum()
    model.train(was_training)
    wrong_total, total = ctx.sum(torch.stack([wrong, count])).tolist()
    return wrong_total / total if total else float("nan")


def validation_error(
    model: nn.Module, loader: ShardLoader, ctx: TrainContext, recipe: Recipe, use_amp: bool, amp_dtype: torch.dtype,
    channels_last: bool,
) -> float:
    """:func:`validate` with the precision given field by field."""
    return validate(model, loader, ctx, recipe, Precision(use_amp, amp_dtype, channels_last))


__all__ = ["EpochStats", "Learner", "MidEpoch", "Precision", "cosine_factor", "cosine_scheduler", "cutmix_rng",
           "epoch_seed", "init_seed", "maybe_cutmix", "train_one_epoch", "validate", "validation_error"]
