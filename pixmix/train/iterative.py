"""Iterative PixMix (the paper's Table 5, "Iterative"): mixing pictures that are feature visualisations of
the network being trained, rendered on the fly into a rolling pool.

Every ``every`` optimiser steps, :class:`IterativePool` renders ``units`` channels of the current model's early
layers (by default the first two ``Conv2d`` modules in module order) with the batched renderer of
:mod:`pixmix.models.fvis_render`, on a deep copy of the weights in ``eval()`` (so the training model's
gradients, BatchNorm statistics and train flags are never touched), resizes them to the recipe's image size
and writes them over the oldest entries of the pool (at most ``pool`` pictures, uint8 on the training device).
Online PixMix then takes each sample's mixing picture from the pool (:meth:`IterativePool.partners`, handed to
:func:`pixmix.data.loader.finish_batch`) instead of the loader's static mixing set.

Schedule: refreshes happen before the optimiser steps ``start + j * every`` where ``start`` is the first step
of epoch ``start_epoch``; ``j >= 1`` when a static mixing set (``--mixset``) is given, whose pictures are used
until the first refresh, and ``j >= 0`` otherwise (the first render is the first pool).

Seeding: the units of the refresh at step ``s`` are a permutation drawn from ``(seed, s)``; unit ``(layer, c)``
is rendered with seed ``derive_seed(seed, "iterative", s, layer)``, so its picture depends on the seed, the step,
the unit and the weights only, not on the rank that renders it. Each sample's pool index is drawn from
``(seed, step, rank)``. Under DDP rank ``r`` renders units ``r, r + world, ...`` and the pictures are shared
with ``all_gather`` (gloo on the CPU, NCCL on GPUs), so every rank holds the same pool.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pixmix.models.fvis_render import derive_seed as render_seed
from pixmix.models.fvis_render import render_units, truncated_trunk
from pixmix.utils.errors import PixmixError
from pixmix.utils.seeding import derive_seed

_UNITS_STREAM = (1 << 40) + 0x17E  # which units a refresh renders
_DRAWS_STREAM = (1 << 40) + 0x17F  # each sample's pool index
DEFAULT_LAYER_COUNT = 2  # "early layers": the first two convolutions in module order
RENDER_SIZE = 32  # the image parameter's size; the model sees it upsampled to 224 px (Lucent's recipe)


@dataclass(frozen=True)
class IterativeOptions:
    """What ``--iterative-fvis-*`` ask for (validated by :class:`~pixmix.train.trainer.TrainConfig`)."""

    every: int  # optimiser steps between refreshes (> 0)
    pool: int = 256  # pictures held
    steps: int = 64  # optimisation steps per render
    units: int = 16  # units rendered per refresh (all ranks together)
    start_epoch: int = 0  # the first epoch mixed with the pool
    size: int = RENDER_SIZE
    lr: float = 0.05
    layers: tuple[str, ...] = ()  # module names; () = the first DEFAULT_LAYER_COUNT Conv2d modules


def early_layers(model: nn.Module, layers: tuple[str, ...] = (), count: int = DEFAULT_LAYER_COUNT
                 ) -> list[tuple[str, int]]:
    """``(module name, channels)`` of ``layers`` (Conv2d modules), else of the first ``count`` Conv2d modules."""
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if not layers:
        return [(name, m.out_channels) for name, m in list(convs.items())[:count]]
    unknown = [name for name in layers if name not in convs]
    if unknown:
        raise PixmixError(f"no Conv2d module(s) {unknown} in the model; the first ones are {list(convs)[:6]}",
                          param="iterative_fvis_layers")
    return [(name, convs[name].out_channels) for name in layers]


def choose_units(layers: list[tuple[str, int]], count: int, seed: int, step: int) -> list[tuple[str, int]]:
    """The ``count`` units the refresh at ``step`` renders: a seeded permutation of all units, in that order."""
    every = [(name, c) for name, channels in layers for c in range(channels)]
    order = torch.randperm(len(every), generator=torch.Generator().manual_seed(
        derive_seed(seed, _UNITS_STREAM, step)))
    return [every[int(i)] for i in order[:count]]


def refresh_due(step: int, *, start_step: int, every: int, static: bool) -> bool:
    """Whether the refresh schedule renders before optimiser step ``step`` (0-based, global)."""
    if step < start_step:
        return False
    offset = step - start_step
    return offset % every == 0 and (offset > 0 or not static)


def render_pictures(model: nn.Module, units: list[tuple[str, int]], options: IterativeOptions, *, seed: int,
                    step: int, image_size: int, device: torch.device) -> torch.Tensor:
    """uint8 [len(units), 3, image_size, image_size] on the CPU: each unit's FVis of a copy of ``model``."""
    if not units:
        return torch.zeros((0, 3, image_size, image_size), dtype=torch.uint8)
    frozen = copy.deepcopy(model).eval()  # never the training model: its flags, grads and BN buffers stay
    for p in frozen.parameters():
        p.requires_grad_(False)
    rendered: dict[tuple[str, int], torch.Tensor] = {}
    for layer, group in groupby(sorted(units), key=lambda unit: unit[0]):
        channels = [c for _, c in group]
        images = render_units(truncated_trunk(frozen, layer), channels, size=options.size, steps=options.steps,
                              lr=options.lr, seed=render_seed(seed, "iterative", step, layer), device=device,
                              batch=len(channels))
        rendered.update({(layer, c): image for c, image in zip(channels, images)})
    stacked = torch.stack([rendered[unit] for unit in units])
    resized = F.interpolate(stacked, size=(image_size, image_size), mode="bilinear", align_corners=False,
                            antialias=True)
    return (resized.clamp(0, 1) * 255).round().to(torch.uint8)


def _all_gather_rows(share: torch.Tensor, rank: int, world_size: int, count: int) -> torch.Tensor:
    """The units' pictures in plan order, when rank ``r`` holds rows ``r, r + world, ...`` (all_gather)."""
    if world_size == 1:
        return share
    import torch.distributed as dist

    per_rank = math.ceil(count / world_size)
    padded = torch.zeros((per_rank, *share.shape[1:]), dtype=share.dtype, device=share.device)
    padded[: len(share)] = share
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    return torch.stack([gathered[i % world_size][i // world_size] for i in range(count)])


@dataclass
class IterativePool:
    """The rolling pool of one rank (the same pictures on every rank)."""

    options: IterativeOptions
    seed: int
    image_size: int
    start_step: int
    static: bool  # a static mixing set serves until the first refresh
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    pictures: torch.Tensor | None = None  # uint8 [n, 3, S, S], n <= options.pool
    oldest: int = 0  # the slot the next rendered picture overwrites once the pool is full
    refreshes: int = 0
    rendered: int = 0

    def maybe_refresh(self, model: nn.Module, step: int) -> bool:
        """Render and insert this step's pictures when the schedule says so; whether it did."""
        due = refresh_due(step, start_step=self.start_step, every=self.options.every, static=self.static)
        # a pool lost on resume (no saved pool) is rendered again at once when there is no static set
        if not due and not (self.pictures is None and not self.static and step >= self.start_step):
            return False
        units = choose_units(early_layers(model, self.options.layers), self.options.units, self.seed, step)
        mine = units[self.rank :: self.world_size]
        share = render_pictures(model, mine, self.options, seed=self.seed, step=step, image_size=self.image_size,
                                device=self.device).to(self.device)
        self.insert(_all_gather_rows(share, self.rank, self.world_size, len(units)))
        self.refreshes += 1
        return True

    def insert(self, new: torch.Tensor) -> None:
        """Append ``new`` pictures up to the capacity, then overwrite the oldest ones, in order."""
        new = new.to(self.device)
        current = new[:0] if self.pictures is None else self.pictures
        for picture in new[-self.options.pool :]:
            if len(current) < self.options.pool:
                current = torch.cat([current, picture[None]])
            else:
                current[self.oldest] = picture
                self.oldest = (self.oldest + 1) % self.options.pool
        self.pictures = current
        self.rendered += len(new)

    def partners(self, count: int, step: int) -> torch.Tensor | None:
        """``count`` mixing pictures for the batch of ``step`` drawn from the pool, or ``None`` (no pool yet:
        the loader's static pictures)."""
        if self.pictures is None or len(self.pictures) == 0:
            return None
        generator = torch.Generator().manual_seed(derive_seed(self.seed, _DRAWS_STREAM, step, self.rank))
        index = torch.randint(len(self.pictures), (count,), generator=generator)
        return self.pictures[index.to(self.pictures.device)]

    def record(self) -> dict[str, Any]:
        """What an epoch's ``log.jsonl`` record says about the pool."""
        return {"fvis_refreshes": self.refreshes, "fvis_rendered": self.rendered,
                "fvis_pool": 0 if self.pictures is None else len(self.pictures)}

    def state_dict(self) -> dict[str, Any]:
        """Enough to continue identically: the pictures (CPU uint8), the next slot and the counters."""
        return {"pictures": None if self.pictures is None else self.pictures.cpu(), "oldest": self.oldest,
                "refreshes": self.refreshes, "rendered": self.rendered}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pictures = state["pictures"]
        self.pictures = None if pictures is None else pictures.to(self.device)
        self.oldest, self.refreshes, self.rendered = int(state["oldest"]), int(state["refreshes"]), int(
            state["rendered"])


def placeholder_pictures() -> list[Any]:
    """The loader's stand-in mixing set when no ``--mixset`` is given: one grey picture, drawn (and replaced by
    the pool's pictures in :func:`~pixmix.data.loader.finish_batch`) so that the per-sample draws stay PixMix's."""
    from PIL import Image

    return [Image.new("RGB", (8, 8), (128, 128, 128))]


def save_pool(path: Path, pool: IterativePool, step: int) -> None:
    """Write the pool after optimiser step ``step`` next to the run's checkpoint (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"step": int(step), **pool.state_dict()}, tmp)
    tmp.replace(path)


def load_pool(path: Path, pool: IterativePool, step: int) -> bool:
    """Restore the pool saved at ``step``; False (pool left empty) when there is none for that step."""
    if not path.is_file():
        return False
    state = torch.load(path, map_location="cpu", weights_only=True)
    if int(state.get("step", -1)) != step:
        return False
    pool.load_state_dict(state)
    return True


__all__ = ["IterativeOptions", "IterativePool", "choose_units", "early_layers", "load_pool", "placeholder_pictures",
           "refresh_due", "render_pictures", "save_pool"]
