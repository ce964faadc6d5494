"""Run under torchrun by tests/test_stream.py: every rank streams two epochs of a shard set as DDP would.

Usage: ``torchrun --nproc_per_node N stream_ddp_script.py FOLDER OUT.json BATCH_SIZE SEED``. Each batch
is followed by an all_reduce, so a rank with fewer batches than another hangs (the test's timeout
catches it). Rank 0 writes ``{"world_size", "epochs": [{"len": [...], "batches": [...], "keys": [[...]]}]}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from pixmix.data.loader import ShardLoader


def main(folder: str, out: str, batch_size: int, seed: int) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    loader = ShardLoader(folder, batch_size=batch_size, seed=seed, num_workers=1, recipe="cifar")
    assert (loader.stream.rank, loader.stream.world_size) == (rank, world), "rank/world not taken from the group"
    epochs = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        keys: list[str] = []
        batches = 0
        for batch in loader:
            step = torch.ones(1)
            dist.all_reduce(step)  # as DDP's gradient all-reduce: every rank must take part in every step
            assert int(step.item()) == world
            keys.extend(batch.keys)
            batches += 1
        gathered: list[object] = [None] * world
        dist.all_gather_object(gathered, {"len": len(loader), "batches": batches, "keys": keys})
        epochs.append({
            "len": [g["len"] for g in gathered],  # type: ignore[index]
            "batches": [g["batches"] for g in gathered],  # type: ignore[index]
            "keys": [g["keys"] for g in gathered],  # type: ignore[index]
        })
    if rank == 0:
        Path(out).write_text(json.dumps({"world_size": world, "epochs": epochs}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
