"""Dead Leaves (Squares) of Baradad et al. 2021 ("Learning to see by looking at noise"), in numpy.

The recipe (docs/mixing-sources.md, "Ablation sets"): a black canvas; each leaf is an axis-aligned
square of side ``r * sqrt(2) * size`` with a uniform random RGB colour and a uniform random centre;
``r`` takes one of 200 linearly spaced values in [0.03, 1] with probability proportional to
``r^-3 - 1``, drawn by inverse CDF; later leaves cover earlier ones; leaves are added until no black
(unpainted) pixel is left or 5,000 leaves have been placed.

Implementation: leaves are drawn in batches of ``BATCH`` (vectorised); the union of a batch's squares
is rasterised with a 2-D difference array (O(batch + size^2), no per-leaf loop), so the canvas is
known to be covered after a batch without painting it; inside the batch that completes the cover, the
exact leaf is found by bisection over prefixes of the batch. Only the leaves up to that one are
painted, in order (slice assignments, so later leaves cover earlier ones). A pixel (centre
``(j + 0.5, i + 0.5)``) belongs to a square when it lies inside it, edges included.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["RADII", "RADIUS_WEIGHTS", "MAX_LEAVES", "sample_radii", "leaves", "paint", "draw"]

RADII = np.linspace(0.03, 1.0, 200)  # as fractions of the image size
RADIUS_WEIGHTS = RADII**-3 - 1.0  # the density; 0 at r = 1, so the largest value is never drawn
_CDF = np.cumsum(RADIUS_WEIGHTS) / RADIUS_WEIGHTS.sum()
MAX_LEAVES = 5000
BATCH = 256


def sample_radii(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` radii (fractions of the size) by inverse CDF of the discrete density over ``RADII``."""
    k = np.searchsorted(_CDF, rng.random(n), side="right")
    return RADII[np.minimum(k, RADII.size - 1)]


def _boxes(cx: np.ndarray, cy: np.ndarray, side: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """Half-open pixel ranges ``[x0, x1) x [y0, y1)`` of the squares, clipped to the canvas."""
    half = side / 2
    x0 = np.clip(np.ceil(cx - half - 0.5), 0, size).astype(np.int64)
    x1 = np.clip(np.floor(cx + half - 0.5) + 1, 0, size).astype(np.int64)
    y0 = np.clip(np.ceil(cy - half - 0.5), 0, size).astype(np.int64)
    y1 = np.clip(np.floor(cy + half - 0.5) + 1, 0, size).astype(np.int64)
    x1, y1 = np.maximum(x1, x0), np.maximum(y1, y0)
    return x0, x1, y0, y1


def _union(x0: np.ndarray, x1: np.ndarray, y0: np.ndarray, y1: np.ndarray, size: int) -> np.ndarray:
    """Boolean ``[size, size]``: pixels inside at least one of the boxes (2-D difference array)."""
    n = size + 1
    idx = np.concatenate([y0 * n + x0, y0 * n + x1, y1 * n + x0, y1 * n + x1])
    w = np.concatenate([np.ones_like(x0), -np.ones_like(x0), -np.ones_like(x0), np.ones_like(x0)])
    diff = np.bincount(idx, weights=w, minlength=n * n).reshape(n, n)
    return np.cumsum(np.cumsum(diff, axis=0), axis=1)[:size, :size] > 0.5


def leaves(rng: np.random.Generator, size: int) -> dict[str, Any]:
    """The leaves of one image, in painting order, up to the one that completes the cover.

    Returns ``x0, x1, y0, y1`` (half-open pixel boxes), ``side`` (pixels), ``radius`` (fraction of
    the size), ``colour`` (uint8 ``[n, 3]``) and ``covered`` (False when ``MAX_LEAVES`` was reached
    with pixels left black)."""
    uncovered = np.ones((size, size), dtype=bool)
    parts: list[dict[str, np.ndarray]] = []
    total = 0
    covered = False
    while total < MAX_LEAVES:
        b = min(BATCH, MAX_LEAVES - total)
        radius = sample_radii(rng, b)
        side = radius * math.sqrt(2) * size
        cx, cy = rng.random(b) * size, rng.random(b) * size
        colour = rng.integers(0, 256, (b, 3), dtype=np.uint8)
        x0, x1, y0, y1 = _boxes(cx, cy, side, size)
        left = uncovered & ~_union(x0, x1, y0, y1, size)
        if left.any():
            uncovered = left
            keep = b
        else:
            # This batch completes the cover: the shortest prefix that does, by bisection.
            lo, hi = 1, b  # the prefix of length hi covers everything
            while lo < hi:
                mid = (lo + hi) // 2
                if (uncovered & ~_union(x0[:mid], x1[:mid], y0[:mid], y1[:mid], size)).any():
                    lo = mid + 1
                else:
                    hi = mid
            keep, covered = hi, True
        parts.append(dict(x0=x0[:keep], x1=x1[:keep], y0=y0[:keep], y1=y1[:keep], side=side[:keep],
                          radius=radius[:keep], colour=colour[:keep]))
        total += keep
        if covered:
            break
    out: dict[str, np.ndarray | bool] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out["covered"] = covered
    return out


def paint(leaf: dict[str, Any], size: int) -> np.ndarray:
    """Paint ``leaf`` (from :func:`leaves`) in order on a black canvas: later leaves cover earlier ones."""
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    boxes = zip(leaf["x0"].tolist(), leaf["x1"].tolist(), leaf["y0"].tolist(), leaf["y1"].tolist(), leaf["colour"],
                strict=True)
    for x0, x1, y0, y1, colour in boxes:
        canvas[y0:y1, x0:x1] = colour
    return canvas


def draw(draw_seed: int, size: int, context: None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """One Dead Leaves image (uint8 ``[size, size, 3]``) and its parameters: the generator protocol's ``draw``."""
    leaf = leaves(np.random.default_rng(draw_seed), size)
    params = {
        "leaves": int(leaf["x0"].size),
        "covered": bool(leaf["covered"]),
        "shape": "square",
        "radii": {"values": int(RADII.size), "range": [float(RADII[0]), float(RADII[-1])], "density": "r^-3 - 1"},
        "max_leaves": MAX_LEAVES,
    }
    return paint(leaf, size), params
