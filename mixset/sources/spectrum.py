"""Spectrum + Color + WMM of Baradad et al. 2021 ("Learning to see by looking at noise"), in torch (CPU).

The recipe (docs/mixing-sources.md, "Ablation sets"): start from uniform noise and run ``ITERATIONS``
(10) rounds of three projections, in this order:

- spectrum: each channel's Fourier amplitude is replaced by ``1 / (|fx|^(s+d) + |fy|^(s-d))``
  (``fx, fy`` in cycles per image) with slope ``s ~ U(0.5, 3.5)`` and anisotropy
  ``d ~ N(0, 1) * 3 / 60``, the DC term set to zero; the phase is kept; then the channel's mean and
  standard deviation from before the projection are restored;
- WMM (wavelet marginal model): each channel is decomposed by a steerable pyramid (3 scales at
  128 px, 4 at 256 px: ``log2(size) - 4``, clipped to [1, 5]; 4 orientations); every band except the
  low-pass residual is histogram-matched to a generalised Laplacian ``exp(-|x / s|^r)`` with
  ``r ~ U(0.4, 0.8)`` (one per image) and ``s`` chosen so that the band keeps its standard
  deviation; the pyramid is then collapsed;
- colour: a reference image of ``K ~ U{3..22}`` random colours (uniform RGB) with multinomial pixel
  counts (probabilities from a flat Dirichlet), laid out as runs in raster order and box-blurred
  (a ``w x w`` box, ``w ~ U{1..size/8}``); the image's colours are projected on the reference's
  colour-PCA axes, each projection histogram-matched to the reference's, and rotated back.

The steerable pyramid is this project's own, built in the Fourier domain (the published code uses
pyrtools, which is not a dependency): log-polar raised-cosine radial masks (``Lo = cos(pi/2 t)``,
``Hi = sin(pi/2 t)``, ``t = clip(log2(r / c) + 1, 0, 1)``, so ``Lo^2 + Hi^2 = 1`` across the octave
``[c/2, c]``), a high-pass residual at ``c = pi`` and band-pass at ``c = pi/2`` on each level,
angular masks ``alpha i cos^3(theta - pi k / 4)`` for ``k = 0..3`` (``alpha^2 = 0.8``, so the four sum
to one in energy; the factor ``i`` makes each band real), and the low-pass cropped to half size in
the Fourier domain between levels. It is a tight frame: collapsing the unmodified bands gives the
image back (to float32 rounding).

Histogram matching is approximate in one respect (O(n) instead of a sort per band): the empirical CDF
is read at the edges of a 1,024-bin histogram, each edge is mapped exactly to the target's quantile
(a 16,384-point table for the generalised Laplacian, the sorted reference for colours), and values
inside a bin are mapped linearly between their edges' targets.

Speed (one core, 256 px): ~0.35 s per image, ~3 images/s; ~15/s at 128 px. The cost is the recipe's:
10 rounds of a 17-band pyramid per channel, 60 histogram matchings and ~45 FFTs per round.

Sizes that are not a multiple of ``2^levels`` are generated at the next multiple and centre-cropped.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch

__all__ = ["ITERATIONS", "levels_for", "amplitude", "build_pyramid", "collapse_pyramid", "match_histograms",
           "generalised_laplacian_quantiles", "render_float", "render_float_batch"]

ITERATIONS = 10
MATCH_BINS = 1024
GL_TABLE = 16384
_ALPHA = math.sqrt(0.8)  # sum_k cos^6(theta - pi k / 4) = 1.25 for k = 0..3


def levels_for(size: int) -> int:
    """Pyramid scales: 3 at 128 px, 4 at 256 px (``log2(size) - 4``), clipped to [1, 5]."""
    return int(min(5, max(1, math.floor(math.log2(size)) - 4)))


# --------------------------------------------------------------------------------------------------
# Spectrum


def amplitude(n: int, slope: float, aniso: float) -> torch.Tensor:
    """``1 / (|fx|^(s+d) + |fy|^(s-d))`` on the ``rfft2`` grid of an ``n x n`` image; DC set to 0."""
    fy = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64).abs()[:, None]
    fx = torch.fft.rfftfreq(n, d=1.0 / n, dtype=torch.float64).abs()[None, :]
    den = fx.pow(slope + aniso) + fy.pow(slope - aniso)
    den[0, 0] = 1.0
    amp = 1.0 / den
    amp[0, 0] = 0.0
    return amp.float()


def _energy(f: torch.Tensor) -> torch.Tensor:
    """``sum |F|^2`` over the full spectrum of each channel from its ``rfft2`` half (even width), DC
    excluded: by Parseval, ``n_pixels^2 * variance``."""
    e = f.real.square() + f.imag.square()
    total = 2 * e.sum(dim=(-2, -1)) - e[..., 0].sum(dim=-1) - e[..., -1].sum(dim=-1) - e[..., 0, 0]
    return total[..., None, None]


def _spectrum_projection(f: torch.Tensor, amp: torch.Tensor) -> torch.Tensor:
    """The spectrum projection on ``rfft2`` spectra ``[c, h, w/2+1]``: amplitude ``amp`` with each
    channel's phase, its DC term (mean) and, by Parseval, its standard deviation kept."""
    mag = f.abs()
    out = torch.where(mag > 0, f / mag.clamp_min(1e-30), torch.ones_like(f)) * amp
    out *= torch.sqrt(_energy(f) / _energy(out).clamp_min(1e-30))
    out[..., 0, 0] = f[..., 0, 0]
    return out


# --------------------------------------------------------------------------------------------------
# Steerable pyramid (Fourier domain)


def _raised_cosine(r: torch.Tensor, cut: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Lo, Hi)`` with ``Lo^2 + Hi^2 = 1``: ``Lo = 1`` below ``cut/2``, ``Hi = 1`` above ``cut``."""
    t = (torch.log2(r.clamp_min(1e-12) / cut) + 1.0).clamp(0.0, 1.0)
    return torch.cos(math.pi / 2 * t), torch.sin(math.pi / 2 * t)


def _masks(h: int, w: int, device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """The pyramid's Fourier masks for an ``h x w`` image, on ``device`` (cached per size and device)."""
    return _masks_on(h, w, torch.device("cpu") if device is None else torch.device(device))


@lru_cache(maxsize=32)
def _masks_on(h: int, w: int, device: torch.device) -> dict[str, torch.Tensor]:
    if device.type != "cpu":  # computed once on the CPU (float64), then copied: the same masks everywhere
        return {k: v.to(device) for k, v in _masks_on(h, w, torch.device("cpu")).items()}
    wy = (2 * math.pi * torch.fft.fftfreq(h, dtype=torch.float64))[:, None].expand(h, w // 2 + 1)
    wx = (2 * math.pi * torch.fft.rfftfreq(w, dtype=torch.float64))[None, :].expand(h, w // 2 + 1)
    r = torch.sqrt(wx * wx + wy * wy)
    theta = torch.atan2(wy, wx)
    lo0, hi0 = _raised_cosine(r, math.pi)
    lo, band = _raised_cosine(r, math.pi / 2)
    angles = torch.arange(4, dtype=torch.float64)[:, None, None] * (math.pi / 4)
    oriented = band[None] * _ALPHA * torch.cos(theta[None] - angles) ** 3  # [4, h, w/2+1], real
    return {
        "lo0": lo0.float(), "hi0": hi0.float(), "lo": lo.float(),
        "oriented": (1j * oriented).to(torch.complex64),  # times i: the bands are real
        "oriented_conj": (-1j * oriented).to(torch.complex64),
    }


def _crop(f: torch.Tensor) -> torch.Tensor:
    """Half-size rfft2 spectrum: keep |ky| < h/4 and kx <= w/4 (the low-pass is zero beyond)."""
    h, wr = f.shape[-2:]
    w = 2 * (wr - 1)
    q = h // 4
    rows = torch.cat([f[..., :q, :], f[..., h - q:, :]], dim=-2)
    return rows[..., : w // 4 + 1] / 4.0  # / 4: the same amplitude in the half-size image


def _pad(f: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_crop`: embed a half-size spectrum in an ``h x w`` one (zeros elsewhere)."""
    q = h // 4
    out = torch.zeros(*f.shape[:-2], h, w // 2 + 1, dtype=f.dtype, device=f.device)
    out[..., :q, : f.shape[-1]] = f[..., :q, :] * 4.0
    out[..., h - q:, : f.shape[-1]] = f[..., q:, :] * 4.0
    return out


def build_pyramid(img: torch.Tensor, levels: int) -> dict[str, Any]:
    """Steerable pyramid of ``img [c, h, w]`` (``h, w`` multiples of ``2^levels``): the real high-pass
    residual ``[c, h, w]``, per level the real oriented bands ``[c, 4, h/2^l, w/2^l]``, and the
    low-pass residual kept as its rfft2 spectrum."""
    return _pyramid_from_spectrum(torch.fft.rfft2(img), img.shape[-2], img.shape[-1], levels)


def _pyramid_from_spectrum(f: torch.Tensor, h: int, w: int, levels: int) -> dict[str, Any]:
    m = _masks(h, w, f.device)
    high = torch.fft.irfft2(f * m["hi0"], s=(h, w))
    x = f * m["lo0"]
    bands = []
    for _ in range(levels):
        m = _masks(h, w, f.device)
        bands.append(torch.fft.irfft2(x[:, None] * m["oriented"], s=(h, w)))
        x = _crop(x * m["lo"])
        h, w = h // 2, w // 2
    return {"high": high, "bands": bands, "low": x}


def collapse_pyramid(pyr: dict[str, Any]) -> torch.Tensor:
    """Inverse of :func:`build_pyramid` (exact for unmodified bands: the pyramid is a tight frame)."""
    x = pyr["low"]
    for band in reversed(pyr["bands"]):
        h, w = band.shape[-2:]
        m = _masks(h, w, band.device)
        x = _pad(x, h, w) * m["lo"] + (torch.fft.rfft2(band) * m["oriented_conj"]).sum(dim=1)
    h, w = pyr["high"].shape[-2:]
    m = _masks(h, w, x.device)
    return torch.fft.irfft2(x * m["lo0"] + torch.fft.rfft2(pyr["high"]) * m["hi0"], s=(h, w))


# --------------------------------------------------------------------------------------------------
# Histogram matching


def match_histograms(x: torch.Tensor, table: torch.Tensor, bins: int = MATCH_BINS) -> torch.Tensor:
    """Each row of ``x [b, n]`` mapped through the quantile table of its target (``table [b or 1, t]``:
    the target's quantiles at ``(j + 0.5) / t``).

    The empirical CDF of a row is read from a ``bins``-bin histogram: at the bin edges it is exact,
    so each edge is mapped to the target quantile of its CDF value, and values inside a bin are
    interpolated linearly between their edges' targets (O(n), no sort). The map is monotone, so the
    order of the values is kept; it is exact at the bin edges."""
    b, n = x.shape
    lo = x.amin(dim=1, keepdim=True)
    span = (x.amax(dim=1, keepdim=True) - lo).clamp_min(1e-12)
    pos = (x - lo).mul_(bins / span)
    # (float ops and int32 indices: mixed-dtype arithmetic and int64 conversions are far slower here)
    cell = torch.floor(pos).clamp_(0.0, bins - 1.0)
    frac = pos.sub_(cell)
    idx = (cell.to(torch.int32) + (torch.arange(b, dtype=torch.int32, device=x.device) * bins)[:, None]).view(-1)
    counts = torch.bincount(idx, minlength=b * bins).view(b, bins)
    edges_u = torch.cat([torch.zeros(b, 1, dtype=torch.float64, device=x.device), counts.cumsum(dim=1).double() / n],
                        dim=1)
    t = table.shape[1]
    q = (edges_u * t - 0.5).clamp_(0.0, t - 1.0)
    j = q.long().clamp_(max=t - 2)
    w = (q - j).float()
    table = table.expand(b, t)
    lo_v = table.gather(1, j)
    edges = lo_v + w * (table.gather(1, j + 1) - lo_v)  # [b, bins + 1]: the targets of the bin edges
    start = edges[:, :-1].reshape(-1)
    step = (edges[:, 1:] - edges[:, :-1]).reshape(-1)
    return start.index_select(0, idx).view(b, n).addcmul_(frac, step.index_select(0, idx).view(b, n))


def generalised_laplacian_quantiles(r: float, points: int = GL_TABLE) -> torch.Tensor:
    """Quantiles at ``(j + 0.5) / points`` of the unit-variance density ``∝ exp(-|x|^r)``.

    ``|x|^r`` is Gamma(1/r, 1)-distributed: its CDF (the regularised incomplete gamma) is tabulated
    on a fine grid and inverted by interpolation."""
    k = 1.0 / r
    g = torch.linspace(0.0, 1.0, 40001, dtype=torch.float64) ** 2 * (60.0 + 40.0 * k)  # dense near 0
    cdf = torch.special.gammainc(torch.full_like(g, k), g).numpy()
    p = (np.arange(points) + 0.5) / points
    mag = np.interp(np.abs(2 * p - 1), cdf, g.numpy()) ** (1.0 / r)
    values = np.sign(2 * p - 1) * mag
    unit_std = math.sqrt(math.exp(math.lgamma(3 * k) - math.lgamma(k)))
    return torch.from_numpy(values / unit_std).float()[None]


def _wmm_projection(f: torch.Tensor, n: int, levels: int, table: torch.Tensor) -> torch.Tensor:
    """The WMM projection of the image with ``rfft2`` spectrum ``f`` (``n x n``); returns the image."""
    pyr = _pyramid_from_spectrum(f, n, n, levels)

    def match(band: torch.Tensor) -> torch.Tensor:
        flat = band.reshape(-1, band.shape[-2] * band.shape[-1])
        mean = flat.mean(dim=1, keepdim=True)
        std = (flat.square().mean(dim=1, keepdim=True) - mean.square()).clamp_min(0.0).sqrt()
        return (match_histograms(flat, table) * std).reshape(band.shape)

    pyr["high"] = match(pyr["high"])
    pyr["bands"] = [match(b) for b in pyr["bands"]]
    return collapse_pyramid(pyr)


# --------------------------------------------------------------------------------------------------
# Colour


def _box_blur(img: np.ndarray, width: int) -> np.ndarray:
    """``width x width`` box blur of ``img [h, w, 3]`` with edge padding (separable cumulative sums)."""
    if width <= 1:
        return img
    a, b = width // 2, width - 1 - width // 2
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (a + 1, b)
        c = np.cumsum(np.pad(img, pad, mode="edge"), axis=axis)
        n = img.shape[axis]
        img = (np.take(c, np.arange(width, width + n), axis=axis) - np.take(c, np.arange(n), axis=axis)) / width
    return img


def _colour_reference(rng: np.random.Generator, n: int) -> tuple[dict[str, Any], torch.Tensor]:
    k = int(rng.integers(3, 23))
    palette = rng.random((k, 3))
    probs = rng.dirichlet(np.ones(k))
    counts = rng.multinomial(n * n, probs)
    width = int(rng.integers(1, max(1, n // 8) + 1))
    ref = np.repeat(palette, counts, axis=0).reshape(n, n, 3)
    blurred = _box_blur(ref, width).reshape(-1, 3)
    params = {"colours": k, "palette": palette.round(4).tolist(), "counts": counts.tolist(), "blur": width}
    return params, torch.from_numpy(blurred).float()


def _colour_model(ref: torch.Tensor) -> dict[str, torch.Tensor]:
    mean = ref.mean(dim=0, keepdim=True)
    centred = ref - mean
    cov = centred.T.double() @ centred.double() / ref.shape[0]
    _, vecs = torch.linalg.eigh(cov)
    vecs = vecs.float()
    table = torch.sort((centred @ vecs).T.contiguous(), dim=1).values  # [3, n]: per-axis quantiles
    return {"mean": mean, "axes": vecs, "table": table}


def _colour_projection(img: torch.Tensor, model: dict[str, torch.Tensor]) -> torch.Tensor:
    c, h, w = img.shape
    px = img.reshape(c, -1).T - model["mean"]
    proj = (px @ model["axes"]).T.contiguous()  # [3, n]
    matched = match_histograms(proj, model["table"])
    return (matched.T @ model["axes"].T + model["mean"]).T.reshape(c, h, w)


# --------------------------------------------------------------------------------------------------
# The generator


def render_float(draw_seed: int, size: int, device: torch.device | str | None = None
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The float image ``[3, size, size]`` (before clipping to [0, 1]) and its parameters.

    Every random draw is made on the CPU (numpy, from ``draw_seed``); ``device`` is where the
    projections run (default: the CPU). On a GPU the FFTs and reductions round differently, so the
    pixels agree with the CPU's closely but not bit for bit."""
    dev = torch.device("cpu") if device is None else torch.device(device)
    levels, n = _grid(size)
    drawn, ref, noise = _draw_params(draw_seed, n)
    img = torch.from_numpy(noise).float().to(dev)
    amp = amplitude(n, drawn["slope"], drawn["anisotropy"]).to(dev)
    table = generalised_laplacian_quantiles(drawn["wmm_exponent"]).to(dev)
    model = _colour_model(ref.to(dev))
    for _ in range(ITERATIONS):
        f = _spectrum_projection(torch.fft.rfft2(img), amp)
        img = _wmm_projection(f, n, levels, table)
        img = _colour_projection(img, model)
    top = (n - size) // 2
    return img[:, top: top + size, top: top + size], _params(drawn, levels)


def _grid(size: int) -> tuple[int, int]:
    """``(pyramid levels, side generated)``: the side is the next multiple of ``2^levels`` (centre-cropped)."""
    levels = levels_for(size)
    return levels, -(-size // 2**levels) * 2**levels


def _draw_params(draw_seed: int, n: int) -> tuple[dict[str, Any], torch.Tensor, np.ndarray]:
    """Every draw of an image, in order: (slope, anisotropy, WMM exponent and colour params; colour
    reference; starting noise)."""
    rng = np.random.default_rng(draw_seed)
    scalars = {"slope": float(rng.uniform(0.5, 3.5)), "anisotropy": float(rng.standard_normal() * 3 / 60),
               "wmm_exponent": float(rng.uniform(0.4, 0.8))}
    colour_params, ref = _colour_reference(rng, n)
    return {**scalars, **colour_params}, ref, rng.random((3, n, n))


def _params(drawn: dict[str, Any], levels: int) -> dict[str, Any]:
    """The recorded parameters of an image, in the order the manifests have always stored them."""
    scalars = ("slope", "anisotropy", "wmm_exponent")
    return {**{k: drawn[k] for k in scalars}, "levels": levels, "orientations": 4, "iterations": ITERATIONS,
            **{k: v for k, v in drawn.items() if k not in scalars}}

# --------------------------------------------------------------------------------------------------
# Many images at once (a GPU's way: one kernel per operation for the whole batch)


def _batched_colour_model(refs: torch.Tensor) -> dict[str, torch.Tensor]:
    """:func:`_colour_model` of each reference ``[b, pixels, 3]``, one at a time: a batched ``eigh`` may pick
    other eigenvector signs than a single one, which the histogram matching then turns into other pixels."""
    models = [_colour_model(ref) for ref in refs]
    return {key: torch.stack([m[key] for m in models]) for key in ("mean", "axes", "table")}


def _batched_colour_projection(img: torch.Tensor, model: dict[str, torch.Tensor]) -> torch.Tensor:
    b, c, h, w = img.shape
    px = img.reshape(b, c, -1).transpose(1, 2) - model["mean"]  # [b, pixels, 3]
    proj = (px @ model["axes"]).transpose(1, 2).reshape(b * c, -1)
    matched = match_histograms(proj, model["table"].reshape(b * c, -1)).reshape(b, c, -1)
    return (matched.transpose(1, 2) @ model["axes"].transpose(1, 2) + model["mean"]).transpose(1, 2).reshape(b, c, h, w)


def _batched_wmm(f: torch.Tensor, n: int, levels: int, tables: torch.Tensor) -> torch.Tensor:
    """:func:`_wmm_projection` of ``b`` images' spectra ``[b, 3, h, w/2+1]``, image ``i`` matched to ``tables[i]``."""
    b = f.shape[0]
    pyr = _pyramid_from_spectrum(f.reshape(b * 3, *f.shape[2:]), n, n, levels)

    def match(band: torch.Tensor) -> torch.Tensor:
        flat = band.reshape(-1, band.shape[-2] * band.shape[-1])  # rows: image-major, then channel (and band)
        mean = flat.mean(dim=1, keepdim=True)
        std = (flat.square().mean(dim=1, keepdim=True) - mean.square()).clamp_min(0.0).sqrt()
        table = tables.repeat_interleave(flat.shape[0] // b, dim=0)
        return (match_histograms(flat, table) * std).reshape(band.shape)

    pyr["high"] = match(pyr["high"])
    pyr["bands"] = [match(band) for band in pyr["bands"]]
    return collapse_pyramid(pyr).reshape(b, 3, n, n)


def render_float_batch(draw_seeds: list[int], size: int, device: torch.device | str | None = None
                       ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """:func:`render_float` of every seed at once: ``([b, 3, size, size], params per image)``.

    The draws are each seed's own (the same as one at a time); the projections run batched on ``device``
    (default: the CPU), which on a GPU is what keeps it busy. Pixels agree with :func:`render_float`'s
    to float rounding, not always bit for bit (batched FFTs may round differently)."""
    dev = torch.device("cpu") if device is None else torch.device(device)
    levels, n = _grid(size)
    draws = [_draw_params(seed, n) for seed in draw_seeds]
    amp = torch.stack([amplitude(n, d[0]["slope"], d[0]["anisotropy"]) for d in draws])[:, None].to(dev)
    tables = torch.cat([generalised_laplacian_quantiles(d[0]["wmm_exponent"]) for d in draws]).to(dev)
    model = _batched_colour_model(torch.stack([d[1] for d in draws]).to(dev))
    img = torch.from_numpy(np.stack([d[2] for d in draws])).float().to(dev)
    for _ in range(ITERATIONS):
        f = _spectrum_projection(torch.fft.rfft2(img), amp)
        img = _batched_wmm(f, n, levels, tables)
        img = _batched_colour_projection(img, model)
    top = (n - size) // 2
    return img[:, :, top: top + size, top: top + size], [_params(d[0], levels) for d in draws]
