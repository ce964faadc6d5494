"""Embedded, offline demo data and the PixMix demo grid.

Synthetic "photos" (shapes over gradients) and colourful escape-time fractals stand in for a dataset
and a mixing set, so the demo, the tests and the benchmarks run with no download.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pixmix.utils.errors import PixmixError

if TYPE_CHECKING:  # torch is imported lazily: the demo's image helpers run without it
    import torch

    from pixmix.augment.pixmix import PixMix


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
    """What :func:`run_demo` made: the recipe's PixMix settings, the grid's file and output statistics."""

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


def run_demo(
    out_dir: Path, recipe: str = "cifar", rows: int = 6, samples_per_row: int = 6, seed: int = 0
) -> DemoSummary:
    """Write ``out_dir/pixmix-demo.png`` (original | mixing picture | PixMix samples) and a JSON summary."""
    import torch

    from pixmix.augment.pixmix import PixMix

    start = time.perf_counter()
    factories = {"cifar": PixMix.cifar, "imagenet": PixMix.imagenet}
    if recipe not in factories:
        raise PixmixError(f"recipe must be one of {sorted(factories)}, got {recipe!r}", param="recipe")
    pixmix = factories[recipe]()
    size = pixmix.image_size or 32
    images = synthetic_images(rows, size, seed=seed)
    mixing = synthetic_mixing_pictures(rows, size, seed=seed + 1)
    tiles, outputs = _demo_rows(pixmix, images, mixing, samples_per_row, torch.Generator().manual_seed(seed))
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "pixmix-demo.png"
    _write_grid(tiles, png, display=max(size, 96), labels=column_labels(samples_per_row))
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
    _write_text(out_dir / "pixmix-demo.json", json.dumps(asdict(summary), indent=2) + "\n")
    return summary


def _demo_rows(
    pixmix: PixMix, images: list[Image.Image], mixing: list[Image.Image], samples_per_row: int, gen: torch.Generator
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The grid's tiles (per row: the image, its mixing picture, its PixMix samples) and the samples alone."""
    from pixmix.augment.pixmix import pil_to_float

    tiles, outputs = [], []
    for image, pic in zip(images, mixing):
        row = [pil_to_float(image), pil_to_float(pic)]
        for _ in range(samples_per_row):
            out = pixmix(image, pic, gen)
            outputs.append(out)
            row.append(out)
        tiles += row
    return tiles, outputs


HEADER_PX = 20  # the band above the grid that names each column


def column_labels(samples_per_row: int) -> list[str]:
    """What each column of the grid shows: the training image, its mixing picture, then its PixMix samples."""
    return ["original", "mixing picture", *(f"PixMix sample {i}" for i in range(1, samples_per_row + 1))]


def _write_grid(tiles: list[torch.Tensor], png: Path, *, display: int, labels: list[str]) -> None:
    """The tiles as one PNG grid, each scaled to ``display`` px (nearest, so pixels stay visible), under a
    header band of :data:`HEADER_PX` px naming each column."""
    import torch
    from PIL import ImageDraw, ImageFont
    from torchvision.utils import make_grid

    padding = 4
    grid = make_grid(
        torch.nn.functional.interpolate(torch.stack(tiles), size=display, mode="nearest"),
        nrow=len(labels),
        padding=padding,
        pad_value=1.0,
    )
    body = Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy())
    image = Image.new("RGB", (body.width, body.height + HEADER_PX), (255, 255, 255))
    image.paste(body, (0, HEADER_PX))
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=11)
    for column, label in enumerate(labels):
        while draw.textlength(label, font=font) > display and " " in label:  # narrow tiles: drop leading words
            label = label.split(" ", 1)[1]
        centre = padding + column * (display + padding) + display / 2
        draw.text((centre, HEADER_PX / 2 + padding / 2), label, fill=(0, 0, 0), font=font, anchor="mm")
    tmp = png.with_suffix(".png.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(png)


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary file and a rename, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
