"""Embedded, offline demo data and the PixMix demo grid.

Synthetic "photos" (shapes over gradients) and colourful escape-time fractals stand in for a dataset
and a mixing set, so the demo, the tests and the benchmarks run with no download.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def synthetic_images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    """``n`` RGB images of ``size`` px: random shapes over a colour gradient, with mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    out = []
    for _ in range(n):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.5) / 3.0
        base = c0 * (1 - t[..., None]) + c1 * t[..., None]
        image = Image.fromarray(base.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = rng.uniform(-0.2, 0.9, 2) * size
            w, h = rng.uniform(0.15, 0.6, 2) * size
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            box = (x0, y0, x0 + w, y0 + h)
            shape = rng.integers(0, 3)
            if shape == 0:
                draw.ellipse(box, fill=fill)
            elif shape == 1:
                draw.rectangle(box, fill=fill)
            else:
                pts = [(x0 + rng.uniform(0, w), y0 + rng.uniform(0, h)) for _ in range(3)]
                draw.polygon(pts, fill=fill)
        noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (size, size, 3))
        out.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return out


def julia_fractal(size: int, rng: np.random.Generator, iterations: int = 64) -> Image.Image:
    """A Julia set near the Mandelbrot boundary, smooth-coloured through a random cosine palette."""
    theta = rng.uniform(0, 2 * np.pi)
    # Points near the main cardioid's edge give connected, detailed Julia sets.
    c = 0.5 * np.exp(1j * theta) - 0.25 * np.exp(2j * theta)
    c *= rng.uniform(0.97, 1.03)
    zoom = rng.uniform(1.2, 1.8)
    centre = complex(*rng.uniform(-0.3, 0.3, 2))
    axis = np.linspace(-zoom, zoom, size, dtype=np.float64)
    z = axis[None, :] + 1j * axis[:, None] + centre
    smooth = np.zeros(z.shape)
    alive = np.ones(z.shape, dtype=bool)
    for i in range(iterations):
        z[alive] = z[alive] ** 2 + c
        escaped = alive & (np.abs(z) > 4.0)
        smooth[escaped] = i + 1 - np.log2(np.log(np.abs(z[escaped])))
        alive &= ~escaped
    smooth[alive] = iterations
    t = smooth / iterations
    phase = rng.uniform(0, 1, 3)
    freq = rng.uniform(0.5, 2.0)
    rgb = 0.5 + 0.5 * np.cos(2 * np.pi * (freq * t[..., None] * 3 + phase))
    rgb *= (t[..., None] < 1)  # the filled-in set is black, as in most fractal art
    return Image.fromarray((rgb * 255).astype(np.uint8))


def synthetic_mixing_pictures(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    """``n`` colourful fractals of ``size`` px (rendered at least 64 px, then resized)."""
    rng = np.random.default_rng(seed)
    render = max(size, 64)
    pics = []
    for _ in range(n):
        pic = julia_fractal(render, rng)
        if render != size:
            pic = pic.filter(ImageFilter.SMOOTH).resize((size, size), Image.Resampling.BILINEAR)
        pics.append(pic)
    return pics


@dataclass
class DemoSummary:
    recipe: str
    k: int
    beta: float
    severity: float
    ops: list[str]
    seed: int
    rows: int
    samples_per_row: int
    grid_png: str
    seconds: float
    output_mean: float
    output_std: float
    unmixed_fraction_expected: float


def run_demo(out_dir: Path, recipe: str = "cifar", rows: int = 6, samples_per_row: int = 6, seed: int = 0) -> DemoSummary:
    """Write ``out_dir/pixmix-demo.png`` (original | mixing picture | PixMix samples) and a JSON summary."""
    import torch
    from torchvision.utils import make_grid

    from pixmix.augment.pixmix import PixMix, pil_to_float

    start = time.perf_counter()
    pixmix = {"cifar": PixMix.cifar, "imagenet": PixMix.imagenet}[recipe]()
    size = pixmix.image_size or 32
    display = max(size, 96)
    images = synthetic_images(rows, size, seed=seed)
    mixing = synthetic_mixing_pictures(rows, size, seed=seed + 1)
    gen = torch.Generator().manual_seed(seed)
    tiles, outputs = [], []
    for image, pic in zip(images, mixing):
        row = [pil_to_float(image), pil_to_float(pic)]
        for _ in range(samples_per_row):
            out = pixmix(image, pic, gen)
            outputs.append(out)
            row.append(out)
        tiles += row
    grid = make_grid(
        torch.nn.functional.interpolate(torch.stack(tiles), size=display, mode="nearest"),
        nrow=samples_per_row + 2,
        padding=4,
        pad_value=1.0,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "pixmix-demo.png"
    tmp = png.with_suffix(".png.tmp")
    Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    tmp.replace(png)
    stacked = torch.stack(outputs)
    cfg = pixmix.config
    summary = DemoSummary(
        recipe=recipe,
        k=cfg.k,
        beta=cfg.beta,
        severity=cfg.severity,
        ops=list(cfg.op_names),
        seed=seed,
        rows=rows,
        samples_per_row=samples_per_row,
        grid_png=str(png),
        seconds=round(time.perf_counter() - start, 3),
        output_mean=round(float(stacked.mean()), 4),
        output_std=round(float(stacked.std()), 4),
        unmixed_fraction_expected=1.0 / (cfg.k + 1),
    )
    summary_path = out_dir / "pixmix-demo.json"
    tmp_json = summary_path.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(asdict(summary), indent=2) + "\n")
    tmp_json.replace(summary_path)
    return summary
