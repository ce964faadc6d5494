"""Where this rank trains: its place in the job (:func:`pixmix.utils.distributed.placement`: process group,
torchrun, SLURM), its device, and the collective operations the training loop needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pixmix.utils.distributed import placement, resolve_device


@dataclass(frozen=True)
class TrainContext:
    """This rank's ``rank`` of ``world_size``, its ``device``, and whether :func:`open_context` started the
    process group (then :func:`close_context` ends it)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for on one)."""
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks, in place."""
        if self.distributed:
            dist.all_reduce(values)
        return values

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out


def open_context(device: str) -> TrainContext:
    """This process's placement and device; starts the process group when the job has several ranks and none
    is running yet (NCCL on CUDA, gloo on the CPU).

    Rank and world size are passed to the group explicitly, so ``srun`` without torchrun (SLURM's variables,
    no ``RANK``/``WORLD_SIZE``) works too; ``MASTER_ADDR``/``MASTER_PORT`` come from the environment.
    """
    where = placement()
    dev = resolve_device(device, local_rank=where.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if where.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=where.rank,
                                world_size=where.world_size)
        owns = True
    return TrainContext(where.rank, where.world_size, where.local_rank, dev, owns)


def close_context(ctx: TrainContext) -> None:
    """End the process group if :func:`open_context` started it."""
    if ctx.owns_group:
        dist.destroy_process_group()


__all__ = ["TrainContext", "close_context", "open_context"]
