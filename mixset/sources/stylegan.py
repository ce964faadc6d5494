"""StyleGAN (Oriented) of Baradad et al. 2021 ("Learning to see by looking at noise"): images from a
randomly initialised, untrained StyleGAN2-like generator. Torch on CPU; this project's own small
network (the published one is NVIDIA's non-commercial code and is not used).

The network, re-drawn for every image from a ``torch.Generator`` seeded with the try's ``draw_seed``:

- mapping: ``z ~ N(0, I_256)`` through a 4-layer MLP (weights ``N(0, 1/fan_in)``, leaky ReLU 0.2)
  to ``w``; each layer's style is ``1 + A w`` (``A ~ N(0, 1/256)``, the StyleGAN2 bias-1 init);
- synthesis: a random ``4 x 4`` input, then per resolution 8, 16, ... up to the image size a bilinear
  x2 upsampling and two modulated 3x3 convolutions (one at 4 x 4), each followed by pink noise, a bias
  and a leaky ReLU (x sqrt 2); channels ``clip(4096 / res, 8, 128)``; a modulated 1x1 "to RGB" at
  every resolution, summed over upsampled resolutions (StyleGAN2's skip architecture);
- "Oriented" filters: every 3x3 conv draws, at each forward pass, a random subset of 5..40 filters of
  the fixed bank :func:`filter_bank` (8 orientations of an edge and of a line, 4 sparse patterns,
  and the negatives of all 20); each input channel is assigned one filter of the subset and each
  (output, input) pair scales it by ``N(0, 1)``: ``W[o, i] = a[o, i] * bank[sel[i]]``. Modulation by
  the style and StyleGAN2's demodulation (unit expected output variance per output channel) follow;
- noise inputs: pink noise with power spectrum ``1 / f^alpha``, ``alpha ~ U(0.5, 1.5)`` per layer,
  unit variance, added with per-channel strengths ``N(0, 1) * U(0.1, 1)``;
- biases ``U(-0.2, 0.2)``;
- output: each channel standardised, then given a random mean and std near ImageNet's (mean
  ``0.485/0.456/0.406 + U(-0.05, 0.05)``, std ``0.229/0.224/0.225 * U(0.8, 1.2)``), clipped to
  [0, 1] and quantised to uint8.

Sizes that are not a power of two are generated at the next one and centre-cropped before the output
standardisation.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "filter_bank", "pink_noise", "channels", "render_float"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Z_DIM = 256
MAPPING_LAYERS = 4
MIN_SUBSET = 5


def channels(res: int) -> int:
    return int(min(128, max(8, 4096 // res)))


@lru_cache(maxsize=1)
def filter_bank() -> torch.Tensor:
    """The 40 fixed 3x3 filters ``[40, 3, 3]``: 8 edges (orientations ``pi k / 8``), 8 lines (same
    orientations), 4 sparse patterns (centre dot, four corners, four edge midpoints, a diagonal
    pair), each with unit L2 norm, then the negatives of those 20 in the same order."""
    yy, xx = torch.meshgrid(torch.arange(-1.0, 2.0), torch.arange(-1.0, 2.0), indexing="ij")
    filters = []
    angles = [math.pi * k / 8 for k in range(8)]
    for theta in angles:  # a step edge across the direction theta, smoothed, zero mean
        d = xx * math.cos(theta) + yy * math.sin(theta)
        filters.append(torch.tanh(2.0 * d))
    for theta in angles:  # a line through the centre along theta, zero mean
        d = -xx * math.sin(theta) + yy * math.cos(theta)
        f = torch.exp(-(d * d) / (2 * 0.4**2))
        filters.append(f - f.mean())
    sparse = torch.zeros(4, 3, 3)
    sparse[0, 1, 1] = 1.0
    sparse[1, ::2, ::2] = 1.0
    sparse[2, 0, 1] = sparse[2, 1, 0] = sparse[2, 1, 2] = sparse[2, 2, 1] = 1.0
    sparse[3, 0, 0], sparse[3, 2, 2] = 1.0, -1.0
    filters.extend(sparse)
    bank = torch.stack(filters)
    bank = bank / bank.flatten(1).norm(dim=1)[:, None, None]
    return torch.cat([bank, -bank])


def pink_noise(res: int, alpha: float, g: torch.Generator, device: torch.device | None = None) -> torch.Tensor:
    """Unit-variance ``[res, res]`` noise with power spectrum ``1 / f^alpha`` (zero mean), shaped on ``device``
    (drawn on the CPU from ``g``)."""
    white = torch.randn(res, res, generator=g)
    white = white if device is None else white.to(device)
    fy = torch.fft.fftfreq(res, d=1.0 / res, device=white.device)[:, None]
    fx = torch.fft.rfftfreq(res, d=1.0 / res, device=white.device)[None, :]
    f = torch.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amp = f.pow(-alpha / 2)
    amp[0, 0] = 0.0
    out = torch.fft.irfft2(torch.fft.rfft2(white) * amp, s=(res, res))
    return out / out.std().clamp_min(1e-12)


def _uniform(g: torch.Generator, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=g)


class _Net:
    """One randomly drawn network; ``layers`` records what each conv drew (for params)."""

    def __init__(self, g: torch.Generator, out_res: int, device: torch.device) -> None:
        self.g = g
        self.out_res = out_res
        self.device = device  # where the feature maps live; every random draw stays on the CPU generator
        self.layers: list[dict[str, Any]] = []
        z = torch.randn(Z_DIM, generator=g)
        w = z / z.square().mean().sqrt()
        for _ in range(MAPPING_LAYERS):
            w = F.leaky_relu(torch.randn(Z_DIM, Z_DIM, generator=g) @ w / math.sqrt(Z_DIM), 0.2) * math.sqrt(2)
        self.w = w

    def style(self, n: int) -> torch.Tensor:
        return 1.0 + torch.randn(n, Z_DIM, generator=self.g) @ self.w / math.sqrt(Z_DIM)

    def conv(self, x: torch.Tensor) -> torch.Tensor:
        g, bank = self.g, filter_bank()
        cin, res = x.shape[1], x.shape[-1]
        cout = channels(res)
        m = int(torch.randint(MIN_SUBSET, bank.shape[0] + 1, (1,), generator=g))
        subset = torch.randperm(bank.shape[0], generator=g)[:m]
        sel = subset[torch.randint(0, m, (cin,), generator=g)]
        a = torch.randn(cout, cin, generator=g) * self.style(cin)[None, :]  # modulated scales
        filt = bank[sel]  # [cin, 3, 3]
        # Demodulation: unit expected variance of each output for unit-variance independent inputs.
        demod = torch.rsqrt((a.square() * filt.flatten(1).square().sum(1)[None, :]).sum(1) + 1e-8)
        weight = (a * demod[:, None])[:, :, None, None] * filt[None]
        x = F.conv2d(x, weight.to(self.device), padding=1)
        alpha = float(_uniform(g, 0.5, 1.5, 1))
        strength = float(_uniform(g, 0.1, 1.0, 1))
        scale = (torch.randn(cout, generator=g) * strength).to(self.device)
        x = x + scale[None, :, None, None] * pink_noise(res, alpha, g, self.device)
        x = x + _uniform(g, -0.2, 0.2, cout).to(self.device)[None, :, None, None]
        self.layers.append({"res": res, "subset": subset.tolist(), "noise_alpha": alpha, "noise_strength": strength})
        return F.leaky_relu(x, 0.2) * math.sqrt(2)

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        cin = x.shape[1]
        weight = (torch.randn(3, cin, generator=self.g) * self.style(cin)[None, :] / math.sqrt(cin)).to(self.device)
        bias = _uniform(self.g, -0.2, 0.2, 3).to(self.device)
        return F.conv2d(x, weight[:, :, None, None]) + bias[None, :, None, None]

    def forward(self) -> torch.Tensor:
        x = torch.randn(1, channels(4), 4, 4, generator=self.g).to(self.device)
        x = self.conv(x)
        rgb = self.to_rgb(x)
        res = 4
        while res < self.out_res:
            res *= 2
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.conv(self.conv(x))
            rgb = F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False) + self.to_rgb(x)
        return rgb[0]


def render_float(draw_seed: int, size: int, device: torch.device | str | None = None
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The standardised float image ``[3, size, size]`` (before clipping and uint8) and its params.

    Every random draw comes from a CPU generator seeded with ``draw_seed``; ``device`` is where the
    network runs (default: the CPU; on a GPU the pixels agree closely, not bit for bit)."""
    g = torch.Generator().manual_seed(draw_seed)
    res = max(8, 1 << (size - 1).bit_length())
    net = _Net(g, res, torch.device("cpu") if device is None else torch.device(device))
    with torch.no_grad():
        rgb = net.forward()
    top = (res - size) // 2
    rgb = rgb[:, top: top + size, top: top + size].double()
    mean_t = (torch.tensor(IMAGENET_MEAN, dtype=torch.float64) + _uniform(g, -0.05, 0.05, 3).double()).to(rgb.device)
    std_t = (torch.tensor(IMAGENET_STD, dtype=torch.float64) * _uniform(g, 0.8, 1.2, 3).double()).to(rgb.device)
    mean = rgb.mean(dim=(1, 2), keepdim=True)
    std = rgb.std(dim=(1, 2), keepdim=True, unbiased=False).clamp_min(1e-12)
    out = (rgb - mean) / std * std_t[:, None, None] + mean_t[:, None, None]
    params = {
        "target_mean": [round(float(v), 6) for v in mean_t], "target_std": [round(float(v), 6) for v in std_t],
        "resolution": res, "convs": len(net.layers),
        "subset_sizes": [len(layer["subset"]) for layer in net.layers],
        "noise_alpha": [round(layer["noise_alpha"], 4) for layer in net.layers],
    }
    return out, params
