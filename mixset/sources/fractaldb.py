"""FractalDB-style greyscale IFS fractals (Kataoka et al., ACCV 2020), in numpy.

The recipe (docs/mixing-sources.md, "Procedural fractals"):

- category search: ``N ~ U{2..7}`` affine maps ``x' = a x + b y + e``, ``y' = c x + d y + f`` with all
  six parameters uniform in [-1, 1] (no contractivity constraint), map ``i`` chosen with probability
  proportional to ``|det A_i| = |a d - b c|``; 100k chaos-game points from the origin, their bounding
  box fitted to a 512 x 512 grid (each axis stretched to fill it); the system is kept when at least
  20% of the grid's pixels are hit, else another one is drawn;
- instances: one of the system's ``6 N`` parameters scaled by a factor in {0.2, 0.4, ..., 2.0}
  (the probabilities follow the new determinants) plus random horizontal/vertical flips, rendered
  with ``200k * (size / 362)^2`` points (200k at FractalDB's 362 px) fitted to the image, every point
  stamped as its own random 3x3 binary patch; white on black, greyscale replicated to RGB.

Categories: image ``index`` is an instance of category ``index % CATEGORIES`` (1,000, as FractalDB-1k),
so the first N images (``--limit N``) span min(N, 1,000) categories and a 100k-image collection has
100 instances of each. The category's system is searched with an rng seeded by ``(seed, category)``,
so it is the same for all of its instances; it is cached per process (all 1,000 fit), so the search
(~0.15 s on average) is paid once per category and process. An instance is accepted when at least
``MIN_FILL`` (20%) and at most ``MAX_FILL`` of its pixels are lit; otherwise another instance is drawn.

Chaos game: ``WALKERS`` walkers run in parallel from the origin; the first ``BURN_IN`` steps are not
recorded (with one walker the origin's few first images are a negligible part of 100k points; with
thousands of walkers starting at the same point they would not be).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["CATEGORIES", "FACTORS", "SEARCH_POINTS", "SEARCH_GRID", "SEARCH_FILL", "MIN_FILL",
           "sample_system", "chaos_game", "search_category", "render_instance", "prepare", "draw", "accept"]

CATEGORIES = 1000
FACTORS = tuple(round(0.2 * k, 1) for k in range(1, 11))  # 0.2, 0.4, ..., 2.0
SEARCH_POINTS = 100_000
SEARCH_GRID = 512
SEARCH_FILL = 0.20
MAX_SEARCH = 5000
INSTANCE_POINTS_AT_362 = 200_000
MIN_FILL = 0.20
MAX_FILL = 0.95
WALKERS = 2000
BURN_IN = 10


def sample_system(rng: np.random.Generator) -> np.ndarray:
    """``[N, 6]`` maps ``(a, b, c, d, e, f)``, ``N ~ U{2..7}``, every parameter uniform in [-1, 1]."""
    n = int(rng.integers(2, 8))
    return rng.uniform(-1.0, 1.0, (n, 6))


def _probabilities(maps: np.ndarray) -> np.ndarray | None:
    det = np.abs(maps[:, 0] * maps[:, 3] - maps[:, 1] * maps[:, 2])
    total = det.sum()
    return det / total if total > 1e-12 else None


def chaos_game(
    maps: np.ndarray, probs: np.ndarray, points: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``points`` points of the attractor: ``WALKERS`` walks from the origin in parallel, the first
    ``BURN_IN`` steps not recorded. Returns ``(x, y)`` float64 arrays (may hold huge or non-finite
    values for expanding systems)."""
    steps = -(-points // WALKERS)
    choice = np.searchsorted(np.cumsum(probs), rng.random((BURN_IN + steps, WALKERS)) * probs.sum(), side="right")
    choice = np.minimum(choice, len(maps) - 1)
    coef = maps[choice]  # [steps, walkers, 6]
    x = np.zeros(WALKERS)
    y = np.zeros(WALKERS)
    xs = np.empty((steps, WALKERS))
    ys = np.empty((steps, WALKERS))
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(BURN_IN + steps):
            c = coef[t]
            x, y = c[:, 0] * x + c[:, 1] * y + c[:, 4], c[:, 2] * x + c[:, 3] * y + c[:, 5]
            if t >= BURN_IN:
                xs[t - BURN_IN], ys[t - BURN_IN] = x, y
    return xs.ravel()[:points], ys.ravel()[:points]


def _fit(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Integer pixel coordinates with each axis' range stretched to ``[lo, hi]``; None if degenerate."""
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return None
    x0, x1, y0, y1 = x.min(), x.max(), y.min(), y.max()
    if x1 - x0 < 1e-9 or y1 - y0 < 1e-9 or max(x1 - x0, y1 - y0) > 1e12:
        return None
    ix = np.rint(lo + (x - x0) * ((hi - lo) / (x1 - x0))).astype(np.int64)
    iy = np.rint(lo + (y - y0) * ((hi - lo) / (y1 - y0))).astype(np.int64)
    return ix, iy


def search_fill(maps: np.ndarray, rng: np.random.Generator) -> float:
    """Fraction of the 512 x 512 search grid hit by 100k points of ``maps`` (0 when degenerate)."""
    probs = _probabilities(maps)
    if probs is None:
        return 0.0
    fitted = _fit(*chaos_game(maps, probs, SEARCH_POINTS, rng), 0, SEARCH_GRID - 1)
    if fitted is None:
        return 0.0
    ix, iy = fitted
    hit = np.zeros(SEARCH_GRID * SEARCH_GRID, dtype=bool)
    hit[iy * SEARCH_GRID + ix] = True
    return float(hit.mean())


@lru_cache(maxsize=CATEGORIES)
def search_category(seed: int, category: int) -> dict[str, Any]:
    """The system of ``category``: the first draw (rng seeded by ``(seed, category)``) whose search
    fill reaches ``SEARCH_FILL``. Returns ``{"maps", "search_fill", "search_tries"}``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, category, 0x0FDB]))
    for tries in range(1, MAX_SEARCH + 1):
        maps = sample_system(rng)
        fill = search_fill(maps, rng)
        if fill >= SEARCH_FILL:
            return {"maps": maps, "search_fill": fill, "search_tries": tries}
    raise RuntimeError(
        f"no FractalDB system with fill >= {SEARCH_FILL} in {MAX_SEARCH} draws (seed={seed}, category={category})"
    )


def render_instance(maps: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray | None:
    """Greyscale ``uint8 [size, size]`` (0 or 255) of ``maps`` with each point stamped as a random 3x3
    binary patch; None when the system degenerates."""
    probs = _probabilities(maps)
    if probs is None:
        return None
    points = max(1000, round(INSTANCE_POINTS_AT_362 * (size / 362) ** 2))
    x, y = chaos_game(maps, probs, points, rng)
    fitted = _fit(x, y, 1, size - 2)  # a 1-pixel border for the patches
    if fitted is None:
        return None
    ix, iy = fitted
    centre = iy * size + ix
    patch = rng.integers(0, 512, points)  # 9 bits per point: which of its 3x3 pixels are set
    canvas = np.zeros(size * size, dtype=np.uint8)
    for bit in range(9):
        dy, dx = bit // 3 - 1, bit % 3 - 1
        on = (patch >> bit) & 1 == 1
        canvas[centre[on] + (dy * size + dx)] = 255
    return canvas.reshape(size, size)


def prepare(seed: int, index: int, size: int) -> dict[str, Any]:
    """The image's category (``index % CATEGORIES``) and its system, shared by the image's tries."""
    category = index % CATEGORIES
    return {"category": category, **search_category(seed, category)}


def draw(draw_seed: int, size: int, context: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """One instance of the category: a parameter scaled by a factor, flips; grey as RGB, and its parameters."""
    rng = np.random.default_rng(draw_seed)
    maps = context["maps"].copy()
    param = int(rng.integers(maps.size))
    factor = FACTORS[int(rng.integers(len(FACTORS)))]
    flip_h, flip_v = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    maps.flat[param] *= factor
    grey = render_instance(maps, size, rng)
    if grey is None:
        grey = np.zeros((size, size), dtype=np.uint8)
    if flip_h:
        grey = grey[:, ::-1]
    if flip_v:
        grey = grey[::-1]
    params = {
        "category": context["category"], "categories": CATEGORIES,
        "maps": context["maps"].round(6).tolist(), "search_fill": round(context["search_fill"], 4),
        "search_tries": context["search_tries"], "param": param, "factor": factor,
        "flip_h": flip_h, "flip_v": flip_v, "fill": round(float((grey > 0).mean()), 4),
    }
    return np.repeat(grey[:, :, None], 3, axis=2), params


def accept(pixels: np.ndarray, params: dict[str, Any]) -> bool:
    """Whether the instance's lit fraction is within ``[MIN_FILL, MAX_FILL]``."""
    return MIN_FILL <= params["fill"] <= MAX_FILL
