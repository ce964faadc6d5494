"""Who am I, how many are we, where do I compute: the one owner of rank, world size and device.

Every stage that runs on several processes or machines (streaming, training, evaluation, ``mixset
build`` and ``mixset shard``) asks here, so they agree on one reading of the environment:

1. an initialised ``torch.distributed`` process group;
2. torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``;
3. SLURM's ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID`` (``srun`` without torchrun);
4. a single process: rank 0 of 1.

Explicit values (``--rank``/``--world-size``) always win. torch is imported inside the functions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pixmix.utils.errors import PixmixError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


@dataclass(frozen=True)
class Placement:
    """This process's place in a job: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(env: Mapping[str, str], *names: str, default: int) -> int:
    """The first of ``names`` set in ``env`` as an int (one-line error naming it when it is not one)."""
    for name in names:
        value = env.get(name)
        if value is not None and value != "":
            try:
                return int(value)
            except ValueError as exc:
                raise PixmixError(f"environment {name}={value!r} is not an integer (torchrun and SLURM set it; "
                                  "unset it or fix the launcher)") from exc
    return default


def placement(rank: int | None = None, world_size: int | None = None,
              env: Mapping[str, str] | None = None) -> Placement:
    """Rank, world size and local rank from the explicit values, else the process group, else torchrun's
    or SLURM's environment, else (0, 1, 0). Checks ``0 <= rank < world_size``."""
    env = os.environ if env is None else env
    group = _process_group()
    env_rank = group[0] if group else _env_int(env, "RANK", "SLURM_PROCID", default=0)
    env_world = group[1] if group else _env_int(env, "WORLD_SIZE", "SLURM_NTASKS", default=1)
    local = _env_int(env, "LOCAL_RANK", "SLURM_LOCALID", default=0)
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    if world_size < 1:
        raise PixmixError(f"world size must be at least 1, got {world_size}", param="world_size")
    if not 0 <= rank < world_size:
        raise PixmixError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})", param="rank")
    return Placement(rank, world_size, local)


def _process_group() -> tuple[int, int] | None:
    """(rank, world) of an initialised torch.distributed group, without importing torch when it is not
    loaded yet (then no group can exist)."""
    import sys

    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)`` of :func:`placement`."""
    p = placement(rank, world_size)
    return p.rank, p.world_size


def resolve_device(device: str = "auto", *, local_rank: int | None = None, prefer_cuda: bool = True) -> Any:
    """A ``torch.device`` for ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``).

    ``auto`` is ``cuda:LOCAL_RANK`` when CUDA is available and ``prefer_cuda``, else the CPU; a bare
    ``cuda`` is ``cuda:LOCAL_RANK``. Asking for CUDA where there is none is a one-line error.
    """
    import torch

    local = placement().local_rank if local_rank is None else local_rank
    if device == "auto":
        use_cuda = prefer_cuda and torch.cuda.is_available()
        return torch.device("cuda", local) if use_cuda else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise PixmixError(f"device {device!r} is not a device (use {DEVICE_CHOICES})", param="device") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PixmixError(f"device {device}: CUDA is not available here (use cpu or auto)", param="device")
        if dev.index is None:
            dev = torch.device("cuda", local)
    elif dev.type != "cpu":
        raise PixmixError(f"device {device!r} is not supported (use {DEVICE_CHOICES})", param="device")
    return dev
