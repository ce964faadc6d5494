"""The plan of ``mixset shard``: which items each shard holds, a pure function of the seed.

For each view, a permutation of the items drawn from (seed, view) is cut into shards of
``per_shard``; so shard order and the order within shards are shuffled from the seed, and the same
seed gives the same shards whatever the number of worker processes or ranks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Stream coordinate of the shuffles (kept apart from the per-item streams, whose first coordinate is an index).
_SHUFFLE = 1 << 40


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its id, view and the items it holds, in order."""

    id: int
    view: int
    items: tuple[int, ...]


def plan_shards(n_items: int, views: int, per_shard: int, seed: int) -> list[ShardTask]:
    """Shards of every view: a permutation of the items per view, cut into runs of ``per_shard``."""
    from pixmix.utils.seeding import derive_seed  # imports torch: only when planning

    tasks: list[ShardTask] = []
    for view in range(views):
        order = np.random.default_rng(derive_seed(seed, _SHUFFLE, view)).permutation(n_items)
        for start in range(0, n_items, per_shard):
            tasks.append(ShardTask(len(tasks), view, tuple(int(i) for i in order[start:start + per_shard])))
    return tasks


def items_digest(items: Sequence[int]) -> str:
    """A short hash of a shard's items: its journal entry records it, so a changed plan redoes the shard."""
    return hashlib.sha256(np.asarray(items, dtype=np.int64).tobytes()).hexdigest()[:16]


__all__ = ["ShardTask", "items_digest", "plan_shards"]
