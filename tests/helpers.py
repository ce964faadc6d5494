"""Assertion helpers shared by the test modules."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from pixmix.models import build_model


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


def kill_when(args: Sequence[str], marker: Path, timeout: float = 120.0) -> None:
    """Run ``args`` and SIGKILL its whole process group as soon as ``marker`` exists (an interrupted job).

    Fails if the command ends before the marker appears (nothing would have been interrupted)."""
    proc = subprocess.Popen(list(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert proc.poll() is None, "the command finished before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()


# --- networks with known predictions, for evaluation tests --------------------------------------------


def spread_model(classes: int, seed: int = 0) -> torch.nn.Module:
    """An untrained smoke CNN whose head is set to spread predictions over the classes."""
    torch.manual_seed(seed)
    model = build_model("smoke", classes).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(200, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        feats = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(model.features(x), 1), 1)
        w = torch.randn(model.fc.weight.shape, generator=g) / feats.std(0)
        model.fc.weight.copy_(w)
        model.fc.bias.copy_(-(w @ feats.mean(0)))
    return model


def constant_model(classes: int, winner: int) -> torch.nn.Module:
    """Always the same logits, whatever the input: class ``winner`` first, then by class id."""
    torch.manual_seed(0)
    model = build_model("smoke", classes).eval()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(-torch.arange(classes, dtype=torch.float32) * 0.1)
        model.fc.bias[winner] = 1.0
    return model
