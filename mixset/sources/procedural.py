"""Procedural colourful fractals for PixMix mixing sets (pure, vectorised numpy).

The stand-in for the paper's curated DeviantArt fractal art when those archives are unreachable
(see docs/mixing-sources.md, "Procedural fractals"). Two kinds:

- ``"ifs"``: iterated function systems sampled as in Anderson & Farrell (WACV 2022): each linear part
  is ``U diag(s1, s2) V`` with random rotations/reflections, the singular values tied by the "sigma
  factor" ``sum_i (s1_i + 2 s2_i) = alpha``, ``alpha ~ U((5+N)/2, (6+N)/2)``; rendered by a chaos game
  with thousands of walkers in parallel, log-density tone mapping, a hue shift of the density plus a
  per-map colour coordinate (as in fractal flames), over a dim colourised plasma or a black background.
- ``"julia"``: Julia sets with ``c`` near the Mandelbrot boundary, random view, smooth iteration count
  through a random cosine palette, with a glow that brightens towards the set.

Sampling is separate from rendering: :func:`sample_fractal_params` draws a :class:`FractalParams`
(JSON-serialisable, everything needed to re-render), :func:`render_fractal` is a pure function of it.
:func:`generate_fractal` gives image ``index`` of the collection ``seed`` as a pure function of
``(seed, index)``. No global RNG (numpy or ``random``) is used anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

import numpy as np

from pixmix.utils.errors import PixmixError

__all__ = [
    "KINDS",
    "BackgroundParams",
    "IFSParams",
    "JuliaParams",
    "FractalParams",
    "sample_fractal_params",
    "render_fractal",
    "quality",
    "generate_fractal",
    "MIN_FILL",
    "MIN_ENTROPY",
    "FILL_LEVEL",
]

KINDS = ("ifs", "julia")

# A pixel counts as "filled" when its brightest channel exceeds this. Backgrounds are kept at or below
# BACKGROUND_MAX_VALUE (~61/255) so quality() can tell fractal from background without a mask.
FILL_LEVEL = 72
BACKGROUND_MAX_VALUE = 0.24

# Quality thresholds, chosen from 300 draws per kind at 256 px (benchmarks/fractal_speed.py prints
# the rates). The coarse entropy is dominated by the dark background, so good "glowing structure on
# dark" pictures score only ~1-2 bits: IFS images at 0.8-1.2 bits still look like fractal art, below
# ~0.8 they are mostly single-hue streaks; under 5% fill they are specks or hairlines. With these
# values 12-17% of IFS draws and ~0-1% of Julia draws are rejected.
MIN_FILL = 0.05
MIN_ENTROPY = 1.0

MIN_SIZE, MAX_SIZE = 8, 4096

# Chaos game: walkers run in parallel; the first steps are not recorded so that walkers that share
# the start point (the fixed point of map 0) have spread over the attractor before they are counted.
_WALKERS = 2048
_SKIP_STEPS = 12
_POINTS_PER_PIXEL = 3.0
_MIN_POINTS = 16384
# Map choice: a lookup table of this many entries (probabilities quantised to 1/4096) is much
# faster than searchsorted on uniform floats, and the quantisation is invisible in the histogram.
_CHOICE_TABLE = 4096
_IFS_MARGIN = 0.05  # fraction of the image left empty on each side of the attractor's bounding box
_S_MAX = 0.995  # largest singular value allowed: strictly contractive maps

_JULIA_BAILOUT2 = 1.0e4  # |z|^2 bailout; large so the smooth iteration count has no visible bands


# --------------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class BackgroundParams:
    """A dim background: ``"black"`` or a colourised smooth-noise ``"plasma"`` seeded by ``seed``."""

    kind: str
    seed: int
    hue: float
    hue_span: float
    saturation: float
    level: float  # the background's largest HSV value, <= BACKGROUND_MAX_VALUE


@dataclass(frozen=True)
class IFSParams:
    """An affine IFS and its colouring. Map i is ``(a, b, c, d, e, f)``: ``x' = a x + b y + e``,
    ``y' = c x + d y + f``; it is chosen with probability proportional to ``|ad - bc|``."""

    maps: tuple[tuple[float, float, float, float, float, float], ...]
    map_colours: tuple[float, ...]  # per-map colour coordinate in [0, 1) (fractal-flame style)
    alpha: float  # the sigma factor the maps were sampled with
    walk_seed: int  # seeds the chaos game's map choices
    hue_shift: float
    density_hue: float  # hue change from empty to densest pixels
    colour_hue: float  # hue change across the per-map colour coordinate
    saturation: float  # U(0.3, 1)
    value: float  # U(0.5, 1)
    gamma: float  # opacity = density ** gamma
    background: BackgroundParams


@dataclass(frozen=True)
class JuliaParams:
    """A view of the Julia set of ``z -> z^2 + c`` and its cosine palette
    ``rgb(t) = a + b cos(2 pi (freq t + phase))`` with ``t = log1p(nu) * scale + offset``."""

    c: tuple[float, float]
    centre: tuple[float, float]
    half_width: float
    rotation: float
    max_iter: int
    pal_a: tuple[float, float, float]
    pal_b: tuple[float, float, float]
    pal_freq: tuple[float, float, float]
    pal_phase: tuple[float, float, float]
    scale: float
    offset: float
    glow: float  # exponent of the brightening towards the set
    floor: float  # brightness far from the set
    interior: str  # "black" or "palette"
    interior_t: float


@dataclass(frozen=True)
class FractalParams:
    """Everything needed to re-render one fractal exactly; exactly one of ``ifs`` / ``julia`` is set."""

    kind: str
    ifs: IFSParams | None = None
    julia: JuliaParams | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists); :meth:`from_json` inverts it."""
        return _to_plain(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FractalParams:
        """Rebuild params from :meth:`to_json` output (also after a ``json.dumps``/``loads`` trip)."""
        kind = data["kind"]
        _check_kind(kind, "kind")
        ifs = julia = None
        if data.get("ifs") is not None:
            d = dict(data["ifs"])
            d["background"] = _from_plain(BackgroundParams, d["background"])
            ifs = _from_plain(IFSParams, d)
        if data.get("julia") is not None:
            julia = _from_plain(JuliaParams, data["julia"])
        return cls(kind=kind, ifs=ifs, julia=julia)


def _to_plain(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_to_plain(v) for v in obj]
    return obj


def _to_tuples(v: Any) -> Any:
    return tuple(_to_tuples(x) for x in v) if isinstance(v, list) else v


def _from_plain(cls: type, data: dict[str, Any]) -> Any:
    return cls(**{f.name: _to_tuples(data[f.name]) for f in fields(cls) if f.name in data})


# --------------------------------------------------------------------------------------------------
# Validation


def _check_kind(kind: object, name: str) -> str:
    if not isinstance(kind, str) or kind not in KINDS:
        raise PixmixError(f"{name} must be one of {KINDS}, got {kind!r}", param=name)
    return kind


def _check_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise PixmixError(f"size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}", param="size")
    return int(size)


# --------------------------------------------------------------------------------------------------
# Sampling


def _seed(rng: np.random.Generator) -> int:
    # Python ints below 2**53 survive any JSON implementation (even ones that parse into doubles).
    return int(rng.integers(0, 2**53))


def _rotation(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _sample_background(rng: np.random.Generator) -> BackgroundParams:
    return BackgroundParams(
        kind="plasma" if rng.random() < 0.75 else "black",
        seed=_seed(rng),
        hue=float(rng.random()),
        hue_span=float(rng.uniform(0.05, 0.35)),
        saturation=float(rng.uniform(0.4, 0.9)),
        level=float(rng.uniform(0.08, BACKGROUND_MAX_VALUE)),
    )


def _sample_ifs(rng: np.random.Generator) -> IFSParams:
    n = int(rng.integers(2, 5))  # 2..4 maps
    alpha = float(rng.uniform((5 + n) / 2, (6 + n) / 2))
    # Split alpha into per-map budgets b_i = s1_i + 2 s2_i. With 0 <= s2 <= s1 <= S_MAX each budget
    # lies in [0, 3 S_MAX]; each draw leaves a remainder the other maps can still cover, and the last
    # map takes exactly the remainder so the constraint holds to rounding error.
    cap = 3 * _S_MAX
    budgets = []
    rest = alpha
    for i in range(n - 1):
        others = n - 1 - i
        b = rng.uniform(max(0.0, rest - others * cap), min(cap, rest))
        budgets.append(b)
        rest -= b
    budgets.append(rest)
    budgets = [budgets[i] for i in rng.permutation(n)]  # no map is special because of draw order
    maps = []
    for b in budgets:
        # s1 >= b/3 keeps s2 <= s1; s1 <= b keeps s2 >= 0.
        s1 = rng.uniform(b / 3, min(b, _S_MAX))
        s2 = (b - s1) / 2
        u = _rotation(rng.uniform(0, 2 * math.pi))
        v = _rotation(rng.uniform(0, 2 * math.pi)) @ np.diag([1.0, 1.0 if rng.random() < 0.5 else -1.0])
        a = u @ np.diag([s1, s2]) @ v
        e, f = rng.uniform(-1, 1, 2)
        maps.append((float(a[0, 0]), float(a[0, 1]), float(a[1, 0]), float(a[1, 1]), float(e), float(f)))
    return IFSParams(
        maps=tuple(maps),
        map_colours=tuple(float(x) for x in rng.random(n)),
        alpha=alpha,
        walk_seed=_seed(rng),
        hue_shift=float(rng.random()),
        density_hue=float(rng.uniform(-0.6, 0.6)),
        colour_hue=float(rng.uniform(0.3, 1.0)) * (1 if rng.random() < 0.5 else -1),
        saturation=float(rng.uniform(0.3, 1.0)),
        value=float(rng.uniform(0.5, 1.0)),
        gamma=float(rng.uniform(0.35, 0.7)),
        background=_sample_background(rng),
    )


def _mandelbrot_escape(c: np.ndarray, max_iter: int) -> np.ndarray:
    """Escape iteration of each ``c`` under ``z -> z^2 + c`` from 0 (``max_iter`` if it never escapes)."""
    z = np.zeros_like(c)
    n = np.full(c.shape, max_iter)
    alive = np.ones(c.shape, dtype=bool)
    for i in range(max_iter):
        z = np.where(alive, z * z + c, z)
        esc = alive & (z.real * z.real + z.imag * z.imag > 4.0)
        n[esc] = i
        alive &= ~esc
    return n


def _sample_c(rng: np.random.Generator) -> complex:
    mode = rng.random()
    if mode < 0.3:
        # Main cardioid: c = lam/2 - lam^2/4 for the fixed point's multiplier lam. |lam| just below 1
        # gives filled sets with slowly attracting interiors; just above 1, nearby bulbs and dust.
        lam = rng.uniform(0.93, 1.04) * np.exp(2j * np.pi * rng.random())
        return complex(lam / 2 - lam * lam / 4)
    if mode < 0.45:
        # Period-2 bulb: c = -1 + lam/4.
        lam = rng.uniform(0.93, 1.04) * np.exp(2j * np.pi * rng.random())
        return complex(-1 + lam / 4)
    # Anywhere on the boundary (antennae, minibrots, seahorse valleys): candidates just outside M,
    # i.e. escaping late, give detailed dust-like "spiral" Julia sets.
    cand = rng.uniform(-2.0, 0.55, 96) + 1j * rng.uniform(0.0, 1.15, 96)
    n = _mandelbrot_escape(cand, 48)
    ok = np.flatnonzero((n >= 14) & (n < 48))
    pick = cand[ok[rng.integers(ok.size)]] if ok.size else cand[np.argmax(np.where(n < 48, n, -1))]
    return complex(pick.real, pick.imag * (1 if rng.random() < 0.5 else -1))


def _triple(values: Iterable[Any]) -> tuple[float, float, float]:
    """Three numbers as Python floats (one per colour channel)."""
    a, b, c = (float(x) for x in values)
    return a, b, c


def _sample_julia(rng: np.random.Generator) -> JuliaParams:
    c = _sample_c(rng)
    max_iter = int(rng.integers(64, 129))
    half_width = float(math.exp(rng.uniform(math.log(0.3), math.log(1.7))))
    if half_width > 1.25:
        centre = complex(*rng.uniform(-0.15, 0.15, 2))
    else:
        # Zoom in on a point near the set: pick among the slowest-escaping points of a coarse grid.
        g = np.linspace(-1.5, 1.5, 40)
        z0 = (g[None, :] + 1j * g[:, None]).ravel()
        nu = _julia_escape(z0, c, 48)
        near = np.flatnonzero(nu >= np.quantile(nu, 0.85))
        centre = complex(z0[near[rng.integers(near.size)]])
    phase0 = rng.random()
    spread = rng.uniform(0.15, 0.45)  # phase offsets between channels: the palette's colourfulness
    phase = phase0 + spread * np.array([0.0, 1.0, 2.0]) * rng.permutation([1.0, 1.0, -1.0]) + rng.uniform(
        -0.05, 0.05, 3
    )
    freq = rng.uniform(0.8, 1.2, 3) * (1 if rng.random() < 0.7 else rng.uniform(1.5, 2.0))
    return JuliaParams(
        c=(c.real, c.imag),
        centre=(centre.real, centre.imag),
        half_width=half_width,
        rotation=float(rng.uniform(0, 2 * math.pi)),
        max_iter=max_iter,
        pal_a=_triple(rng.uniform(0.45, 0.6, 3)),
        pal_b=_triple(rng.uniform(0.35, 0.5, 3)),
        pal_freq=_triple(freq),
        pal_phase=_triple(x % 1.0 for x in phase),
        scale=float(rng.uniform(0.4, 1.4)),
        offset=float(rng.random()),
        glow=float(rng.uniform(0.6, 1.6)),
        floor=float(rng.uniform(0.0, 0.35)),
        interior="black" if rng.random() < 0.6 else "palette",
        interior_t=float(rng.random()),
    )


def sample_fractal_params(rng: np.random.Generator, kind: str) -> FractalParams:
    """Draw the parameters of one fractal of ``kind`` (``"ifs"`` or ``"julia"``) from ``rng``."""
    _check_kind(kind, "kind")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if kind == "ifs":
        return FractalParams(kind="ifs", ifs=_sample_ifs(rng))
    return FractalParams(kind="julia", julia=_sample_julia(rng))


# --------------------------------------------------------------------------------------------------
# Rendering helpers


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray | float, v: np.ndarray | float | np.floating[Any]) -> np.ndarray:
    """Vectorised HSV -> RGB for flat ``h`` (hue wraps), ``s``, ``v`` in [0, 1] (scalars or like ``h``).

    Returns planar float32 ``[3, len(h)]``: with the channel axis first every op runs over long
    contiguous rows (an interleaved ``[..., 3]`` layout made numpy's inner loops 3 elements long and
    the whole colour stage several times slower). Closed form ``v - v s clip(min(k, 4 - k), 0, 1)``
    with ``k = (n + 6h) mod 6``, n = 5, 3, 1: no per-sector branching."""
    h = np.asarray(h, dtype=np.float32).reshape(-1)
    k = h[None, :] * np.float32(6.0) + np.array([[5.0], [3.0], [1.0]], dtype=np.float32)
    k -= np.float32(6.0) * np.floor(k * np.float32(1 / 6))  # mod 6 (np.mod on floats is far slower)
    w = np.minimum(k, np.float32(4.0) - k)
    np.clip(w, np.float32(0.0), np.float32(1.0), out=w)
    s = np.asarray(s, dtype=np.float32).reshape(-1)
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    w *= s * v
    return v - w


@lru_cache(maxsize=32)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """``[size, cells + 1]`` smoothstep interpolation weights from a coarse lattice to ``size`` pixels."""
    x = (np.arange(size) + 0.5) / size * cells
    i = np.minimum(x.astype(np.int64), cells - 1)
    f = x - i
    f = f * f * (3 - 2 * f)  # smoothstep: no visible lattice creases
    m = np.zeros((size, cells + 1), dtype=np.float32)
    m[np.arange(size), i] = 1 - f
    m[np.arange(size), i + 1] = f
    m.flags.writeable = False
    return m


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Cheap plasma: three octaves of smoothstep value noise, in [0, 1]. Each octave is ``L G L^T``
    with a tiny random lattice ``G``, so it costs two small matrix products."""
    out = np.zeros((size, size), dtype=np.float32)
    for cells, amp in ((2, 1.0), (4, 0.5), (8, 0.25)):
        m = _interp_matrix(size, cells)
        g = rng.random((cells + 1, cells + 1), dtype=np.float32)
        out += amp * (m @ g @ m.T)
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-6)


def _render_background(bg: BackgroundParams, size: int) -> np.ndarray:
    """Planar float32 ``[3, size * size]``."""
    if bg.kind == "black":
        return np.zeros((3, size * size), dtype=np.float32)
    rng = np.random.default_rng(bg.seed)
    n1 = _smooth_noise(rng, size)
    n2 = _smooth_noise(rng, size)
    # Two independent fields: hue drifts with one, brightness with the other.
    return _hsv_to_rgb(bg.hue + bg.hue_span * n1, bg.saturation, bg.level * (0.25 + 0.75 * n2))


def _blur121(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 smoothing (edges replicated). Splatting each chaos-game point over a
    3x3 footprint removes the speckle of ~3 points per pixel and keeps thin filaments visible."""
    out = img * np.float32(2.0)
    out[1:] += img[:-1]
    out[:-1] += img[1:]
    out[0] += img[0]
    out[-1] += img[-1]
    res = out * np.float32(2.0)
    res[:, 1:] += out[:, :-1]
    res[:, :-1] += out[:, 1:]
    res[:, 0] += out[:, 0]
    res[:, -1] += out[:, -1]
    res *= np.float32(1 / 16)
    return res


def _choice_table(weights: np.ndarray) -> np.ndarray:
    """Map indices repeated in proportion to ``weights`` (largest-remainder rounding to 4096 slots)."""
    total = weights.sum()
    p = weights / total if total > 0 else np.full(weights.size, 1.0 / weights.size)
    raw = p * _CHOICE_TABLE
    counts = np.floor(raw).astype(np.int64)
    short = _CHOICE_TABLE - counts.sum()
    counts[np.argsort(-(raw - counts), kind="stable")[:short]] += 1
    return np.repeat(np.arange(weights.size), counts)


def _render_ifs(p: IFSParams, size: int) -> np.ndarray:
    xs, ys, cs = _chaos_game(p, size)
    bg = _render_background(p.background, size)
    splat = _splat(xs, ys, cs, size)
    if splat is None:
        return _to_uint8(bg, size)  # a degenerate (point-like) attractor: nothing to draw
    hits, csum = splat
    return _to_uint8(_tone_map(p, hits, csum, bg), size)


def _map_draws(p: IFSParams, coef: np.ndarray, steps: int) -> tuple[np.ndarray, ...]:
    """The coefficients a..f and colour of the map each walker applies at each step: 7 arrays [steps, walkers]."""
    det = np.abs(coef[:, 0] * coef[:, 3] - coef[:, 1] * coef[:, 2])
    table = _choice_table(det)
    rng = np.random.default_rng(p.walk_seed)
    # One bulk draw + gathers for all steps: per-step fancy indexing costs more than the arithmetic.
    # Raw 64-bit draws split into four 12-bit slots each: ~4x cheaper than Generator.integers here.
    raw = rng.bit_generator.random_raw(-(-steps * _WALKERS // 4)).view(np.uint16)[: steps * _WALKERS]
    slot = (raw & (_CHOICE_TABLE - 1)).astype(np.intp).reshape(steps, _WALKERS)
    cols = [np.take(coef[:, k].astype(np.float32)[table], slot) for k in range(6)]
    mc = np.take(np.asarray(p.map_colours, dtype=np.float32)[table], slot)
    return (*cols, mc)


def _chaos_game(p: IFSParams, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points ``(xs, ys)`` of every walker after the skipped steps, and their colour coordinates."""
    coef = np.array(p.maps, dtype=np.float64)  # [n, 6]
    n_points = max(_MIN_POINTS, int(_POINTS_PER_PIXEL * size * size))
    steps = _SKIP_STEPS + -(-n_points // _WALKERS)
    ca, cb, cc, cd, ce, cf, mc = _map_draws(p, coef, steps)

    # Start every walker at the fixed point of map 0, which lies on the attractor (no burn-in needed
    # for correctness; the skipped steps only let walkers that share it spread out).
    a0 = coef[0, :4].reshape(2, 2)
    fx, fy = np.linalg.solve(np.eye(2) - a0, coef[0, 4:])
    xs = np.empty((steps, _WALKERS), dtype=np.float32)
    ys = np.empty((steps, _WALKERS), dtype=np.float32)
    cs = np.empty((steps, _WALKERS), dtype=np.float32)
    x = np.full(_WALKERS, fx, dtype=np.float32)
    y = np.full(_WALKERS, fy, dtype=np.float32)
    c = np.full(_WALKERS, p.map_colours[0], dtype=np.float32)
    tmp = np.empty(_WALKERS, dtype=np.float32)
    for t in range(steps):
        xt, yt, ct = xs[t], ys[t], cs[t]
        np.multiply(ca[t], x, out=xt)
        np.multiply(cb[t], y, out=tmp)
        xt += tmp
        xt += ce[t]
        np.multiply(cc[t], x, out=yt)
        np.multiply(cd[t], y, out=tmp)
        yt += tmp
        yt += cf[t]
        # Flame-style colour coordinate: the running average of the maps' colours, most recent first.
        np.add(c, mc[t], out=ct)
        ct *= 0.5
        x, y, c = xt, yt, ct
    return xs[_SKIP_STEPS:], ys[_SKIP_STEPS:], cs[_SKIP_STEPS:]


def _splat(xs: np.ndarray, ys: np.ndarray, cs: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Blurred hit counts and colour sums per pixel (flat), the attractor fitted to the image; None if degenerate."""
    x0, x1, y0, y1 = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
    extent = max(x1 - x0, y1 - y0)
    if not math.isfinite(extent) or extent < 1e-9:
        return None
    # Fit the bounding box, aspect kept, centred, inside a margin.
    scale = (1 - 2 * _IFS_MARGIN) * size / extent
    ox = size / 2 - scale * (x0 + x1) / 2
    oy = size / 2 - scale * (y0 + y1) / 2
    ix = np.clip((xs * np.float32(scale) + np.float32(ox)).astype(np.int64), 0, size - 1)
    iy = np.clip((ys * np.float32(scale) + np.float32(oy)).astype(np.int64), 0, size - 1)
    flat = (iy * size + ix).ravel()
    hits = _blur121(np.bincount(flat, minlength=size * size).astype(np.float32).reshape(size, size)).ravel()
    csum = np.bincount(flat, weights=cs.ravel(), minlength=size * size).astype(np.float32)
    csum = _blur121(csum.reshape(size, size)).ravel()
    return hits, csum


def _tone_map(p: IFSParams, hits: np.ndarray, csum: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """The attractor's colours over the background ``bg`` (planar, flat), opaque where it is dense."""
    # Log-density tone mapping, normalised by a high quantile of the visited pixels rather than the max,
    # so a few hot spots (near fixed points) do not leave the rest of the attractor dim.
    visited = hits > 0
    hv = hits[visited]
    ref = float(np.partition(hv, int(0.995 * (hv.size - 1)))[int(0.995 * (hv.size - 1))]) if hv.size else 1.0
    dens = np.minimum(np.log1p(hits) / math.log1p(max(ref, 1.0)), 1.0)
    mean_c = np.where(visited, csum / np.maximum(hits, 1.0), 0.0)
    hue = p.hue_shift + p.density_hue * dens + p.colour_hue * mean_c
    # Denser regions get a little less saturated (a highlight) as in flame renderers.
    d2 = dens * dens
    sat = p.saturation * (1.0 - 0.35 * d2 * d2)
    fg = _hsv_to_rgb(hue, sat, np.float32(p.value))
    opacity = np.exp(np.float32(p.gamma) * np.log(dens))  # dens ** gamma; np.power is far slower
    fg -= bg
    fg *= opacity
    fg += bg
    return fg


def _julia_escape(z0: np.ndarray, c: complex, max_iter: int) -> np.ndarray:
    """Smooth escape count ``nu`` of each start point (``-1`` where it never escapes).

    Only points still iterating are kept in the working arrays, so the cost follows the number of
    live points, not ``len(z0) * max_iter``."""
    nu = np.full(z0.shape[0], -1.0, dtype=np.float32)
    z = z0.astype(np.complex64)
    cc = np.complex64(c)
    pos = np.arange(z0.shape[0])
    for n in range(1, max_iter + 1):
        z *= z
        z += cc
        r2 = z.real * z.real
        r2 += z.imag * z.imag
        esc = r2 > _JULIA_BAILOUT2
        hit = np.flatnonzero(esc)
        if hit.size:
            # nu = n + 1 - log2(log|z|): continuous across iteration bands.
            nu[pos[hit]] = n + 1 - np.log2(0.5 * np.log(r2[hit]))
            keep = ~esc
            z = z[keep]
            pos = pos[keep]
            if pos.size == 0:
                break
    return nu


def _render_julia(p: JuliaParams, size: int) -> np.ndarray:
    u = ((np.arange(size) + 0.5) / size * 2 - 1) * p.half_width
    rot = complex(math.cos(p.rotation), math.sin(p.rotation))
    z0 = (complex(*p.centre) + rot * (u[None, :] + 1j * u[:, None])).ravel()
    nu = _julia_escape(z0, complex(*p.c), p.max_iter)
    inside = nu < 0
    nu_e = np.maximum(nu, 0.0)

    t = np.log1p(nu_e) * np.float32(p.scale) + np.float32(p.offset)
    a, b = np.asarray(p.pal_a, np.float32)[:, None], np.asarray(p.pal_b, np.float32)[:, None]
    fr, ph = np.asarray(p.pal_freq, np.float32)[:, None], np.asarray(p.pal_phase, np.float32)[:, None]
    # Planar [3, N] (see _hsv_to_rgb for why).
    rgb = np.cos(np.float32(2 * np.pi) * (t[None, :] * fr + ph))
    rgb *= b
    rgb += a
    # Glow: brightness rises towards the set (slow escape), so far-away exterior stays dark and the
    # filaments shine, as in most escape-time fractal art. Normalised by a high quantile of nu.
    esc_nu = nu_e[~inside]
    ref = float(np.quantile(esc_nu, 0.98)) if esc_nu.size else 1.0
    bright = np.minimum(nu_e / np.float32(max(ref, 1e-3)), np.float32(1.0)) ** np.float32(p.glow)
    rgb *= np.float32(p.floor) + np.float32(1 - p.floor) * bright
    if inside.any():
        if p.interior == "black":
            rgb[:, inside] = 0.0
        else:
            tin = np.float32(p.interior_t)
            rgb[:, inside] = 0.6 * (a + b * np.cos(np.float32(2 * np.pi) * (tin * fr + ph)))
    return _to_uint8(rgb, size)


def _to_uint8(planar: np.ndarray, size: int) -> np.ndarray:
    """Planar float ``[3, size * size]`` in [0, 1] -> interleaved uint8 ``[size, size, 3]``."""
    q = np.clip(planar * np.float32(255.0) + np.float32(0.5), 0, 255).astype(np.uint8)
    out = np.empty((size * size, 3), dtype=np.uint8)
    for ch in range(3):  # three strided writes beat a general transpose copy
        out[:, ch] = q[ch]
    return out.reshape(size, size, 3)


def render_fractal(params: FractalParams, size: int = 256) -> np.ndarray:
    """Render ``params`` as a ``uint8 [size, size, 3]`` RGB image; a pure function of its arguments."""
    size = _check_size(size)
    if not isinstance(params, FractalParams):
        raise ValueError(f"params must be a FractalParams, got {type(params).__name__}")
    _check_kind(params.kind, "kind")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if params.kind == "ifs":
            if params.ifs is None:
                raise ValueError("params.ifs must be set for kind 'ifs'")
            return _render_ifs(params.ifs, size)
        if params.julia is None:
            raise ValueError("params.julia must be set for kind 'julia'")
        return _render_julia(params.julia, size)


# --------------------------------------------------------------------------------------------------
# Quality and the collection


def quality(image: np.ndarray) -> tuple[float, float]:
    """``(fill, entropy)`` of a ``uint8 [H, W, 3]`` image.

    fill: the fraction of pixels whose brightest channel exceeds ``FILL_LEVEL`` (the renderers keep
    backgrounds below it). entropy: Shannon entropy in bits of the image's colours quantised to 8
    levels per channel (512 bins; 0 for a flat image, about 9 for uniform noise)."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {img.dtype} {list(img.shape)}")
    if img.shape[0] * img.shape[1] == 0:
        return 0.0, 0.0
    fill = float((img.max(axis=2) > FILL_LEVEL).mean())
    q = (img >> 5).astype(np.int32)
    code = (q[..., 0] << 6) | (q[..., 1] << 3) | q[..., 2]
    counts = np.bincount(code.ravel(), minlength=512)
    pr = counts[counts > 0] / code.size
    entropy = float(-(pr * np.log2(pr)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0
    return fill, max(entropy, 0.0)


def generate_fractal(
    seed: int,
    index: int,
    size: int = 256,
    kinds: Sequence[str] = KINDS,
    min_fill: float = MIN_FILL,
    min_entropy: float = MIN_ENTROPY,
    max_tries: int = 50,
) -> tuple[np.ndarray, FractalParams, int]:
    """Image ``index`` of the collection ``seed``: ``(image, params, tries)``.

    A pure function of its arguments: the rng is ``default_rng(SeedSequence([seed, index]))``, so the
    result never depends on other images generated before or in other processes. The kind is drawn
    once per image (so rejections do not bias the mix of kinds); parameters are re-drawn until
    :func:`quality` passes both thresholds."""
    size = _check_size(size)
    for name, v in (("seed", seed), ("index", index)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise PixmixError(f"{name} must be a non-negative integer, got {v!r}", param=name)
    if isinstance(kinds, str) or not kinds:
        raise PixmixError(f"kinds must be a non-empty sequence of {KINDS}, got {kinds!r}", param="kinds")
    kinds = tuple(_check_kind(k, "kinds") for k in kinds)
    if isinstance(max_tries, bool) or not isinstance(max_tries, (int, np.integer)) or max_tries < 1:
        raise PixmixError(f"max_tries must be a positive integer, got {max_tries!r}", param="max_tries")
    if not 0.0 <= min_fill <= 1.0:
        raise PixmixError(f"min_fill must be in [0, 1], got {min_fill!r}", param="min_fill")
    if not 0.0 <= min_entropy <= 9.0:
        raise PixmixError(f"min_entropy must be in [0, 9] bits, got {min_entropy!r}", param="min_entropy")

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    kind = kinds[int(rng.integers(len(kinds)))]
    for tries in range(1, int(max_tries) + 1):
        params = sample_fractal_params(rng, kind)
        image = render_fractal(params, size)
        fill, entropy = quality(image)
        if fill >= min_fill and entropy >= min_entropy:
            return image, params, tries
    raise RuntimeError(
        f"no {kind!r} fractal passed quality (min_fill={min_fill}, min_entropy={min_entropy}) in "
        f"{max_tries} tries for seed={seed}, index={index}"
    )
