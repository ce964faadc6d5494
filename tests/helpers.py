"""Assertion helpers shared by the test modules."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def no_global_rng() -> Iterator[None]:
    """Fail if the block advances torch's, numpy's or python's global RNG."""
    torch_state = torch.random.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    yield
    assert torch.equal(torch.random.get_rng_state(), torch_state), "global torch RNG was used"
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:], (
        "global numpy RNG was used"
    )
    assert random.getstate() == py_state, "global python RNG was used"


def ks_two_sample(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: max |ECDF_a - ECDF_b| over all sample points."""
    a, b = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))
