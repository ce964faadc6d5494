"""Deriving independent random streams from one seed, as pure functions of their coordinates."""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(seed: int, *coordinates: int) -> int:
    """A 63-bit seed for the stream at ``coordinates`` (e.g. epoch, sample index) under ``seed``.

    SeedSequence hashes its entropy well, so neighbouring coordinates give unrelated streams.
    """
    entropy = [int(seed), *(int(c) for c in coordinates)]
    if any(v < 0 for v in entropy):
        raise ValueError(f"seed and stream coordinates must be >= 0, got {entropy}")
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def generator_for(seed: int, *coordinates: int) -> torch.Generator:
    """A CPU ``torch.Generator`` for the stream at ``coordinates`` under ``seed``."""
    return torch.Generator().manual_seed(derive_seed(seed, *coordinates))
