"""The mixing sets of the paper's ablations, generated: Dead Leaves, Spectrum + Color + WMM, StyleGAN
(Oriented) and FractalDB (see docs/mixing-sources.md, "Ablation sets" and "Procedural fractals").

Each generator is a pure function of ``(seed, index)``; the implementations live in their own modules
and were written from the published recipes (no third-party code):

- ``"deadleaves"`` (:mod:`mixset.sources.deadleaves`): Dead Leaves (Squares), Baradad et al. 2021;
- ``"spectrum"`` (:mod:`mixset.sources.spectrum`): Spectrum + Color + WMM, Baradad et al. 2021;
- ``"stylegan"`` (:mod:`mixset.sources.stylegan`): a small randomly initialised StyleGAN2-like generator
  with the "Oriented" filter bank and pink noise, Baradad et al. 2021;
- ``"fractaldb"`` (:mod:`mixset.sources.fractaldb`): greyscale FractalDB-style IFS, Kataoka et al. 2020.

:func:`generate` gives image ``index`` of collection ``seed``. Its rng is
``default_rng(SeedSequence([seed, index]))``; every try draws a ``draw_seed`` from it and the
generator's output is a pure function of ``(draw_seed, size)`` (plus, for FractalDB, the category
found from ``(seed, index % CATEGORIES)``). Degenerate images (almost constant, or
failing a generator's own check) are re-drawn up to ``max_tries`` times; the tries are reported.
No global RNG (numpy, ``random`` or torch's default generator) is used.

A generator module provides ``draw(draw_seed, size, context) -> (uint8 [size, size, 3], params)``, or
(the torch generators) ``render_float(draw_seed, size) -> (float [3, size, size] in [0, 1], params)``,
which this module runs on one thread and rounds; optionally ``prepare(seed, index, size)`` (a context
shared by the tries of one image) and ``accept(pixels, params)`` (its own quality check).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from pixmix.utils.errors import PixmixError

__all__ = ["NAMES", "DEVICE_GENERATORS", "MIN_STD", "MAX_TRIES", "generate", "generate_batch", "generate_with_tries",
           "single_thread"]

NAMES = ("deadleaves", "spectrum", "stylegan", "fractaldb")
_MODULES = {name: f"mixset.sources.{name}" for name in NAMES}

# An image whose uint8 values (all channels together) have a standard deviation below this is
# "almost constant" and re-drawn. Accepted images of every generator are far above it (>= 30).
MIN_STD = 4.0
MAX_TRIES = 20
# The generators written in torch, which can run on a GPU (the others are numpy code).
DEVICE_GENERATORS = ("spectrum", "stylegan")
MIN_SIZE, MAX_SIZE = 16, 4096


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
        high is not None and value > high
    ):
        span = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise PixmixError(f"{name} must be an integer {span}, got {value!r}", param=name)
    return int(value)


def _module(name: str) -> Any:
    if name not in _MODULES:
        raise PixmixError(f"generator must be one of {NAMES}, got {name!r}")
    return importlib.import_module(_MODULES[name])


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block (and restore the setting after).

    Floating-point reductions split over threads may round differently with the thread count; one
    thread makes the torch-based generators' bytes independent of the machine's cores (the build
    parallelises over processes instead)."""
    import torch

    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def _draw(module: Any, draw_seed: int, size: int, context: Any, device: str | None = None
          ) -> tuple[np.ndarray, dict[str, Any]]:
    """One try of a generator module: its ``draw`` (uint8 HxWx3), or, for the torch generators, its
    ``render_float`` (float [3, H, W] in [0, 1], run on one thread, or on ``device``) rounded to uint8."""
    if hasattr(module, "draw"):
        return module.draw(draw_seed, size, context)
    with single_thread():
        img, params = module.render_float(draw_seed, size, device) if device else module.render_float(draw_seed, size)
    return _to_uint8(img), params


def generate_with_tries(
    name: str, seed: int, index: int, size: int = 256, max_tries: int = MAX_TRIES, device: str | None = None
) -> tuple[np.ndarray, dict[str, Any], int]:
    """Image ``index`` of the ``name`` collection ``seed``: ``(uint8 [size, size, 3], params, tries)``.

    ``device`` (the torch generators, :data:`DEVICE_GENERATORS`): where the image is computed; the
    draws are the same, the pixels agree with the CPU's to rounding (not bit for bit)."""
    if device is not None and name not in DEVICE_GENERATORS:
        raise PixmixError(f"generator {name!r} runs on the CPU only (device {device!r}); "
                          f"on a device: {', '.join(DEVICE_GENERATORS)}", param="device")
    module = _module(name)
    seed = _check_int("seed", seed, 0)
    index = _check_int("index", index, 0)
    size = _check_int("size", size, MIN_SIZE, MAX_SIZE)
    max_tries = _check_int("max_tries", max_tries, 1)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    prepare = getattr(module, "prepare", None)
    accept = getattr(module, "accept", None)
    context = prepare(seed, index, size) if prepare is not None else None
    for tries in range(1, max_tries + 1):
        draw_seed = int(rng.integers(0, 2**53))  # JSON-safe in any implementation
        pixels, params = _draw(module, draw_seed, size, context, device)
        if pixels.std() >= MIN_STD and (accept is None or accept(pixels, params)):
            return pixels, {"draw_seed": draw_seed, **params}, tries
    raise RuntimeError(
        f"no {name!r} image passed the quality checks in {max_tries} tries for seed={seed}, index={index}"
    )


def _to_uint8(img: Any) -> np.ndarray:
    import torch

    return (img.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()


def generate_batch(name: str, seed: int, indices: list[int], size: int = 256, device: str | None = None
                   ) -> list[tuple[np.ndarray, dict[str, Any], int]]:
    """:func:`generate_with_tries` of every index, the first tries rendered together (generators with a
    ``render_float_batch``: spectrum; the others one at a time). An image whose first try is rejected is
    redone alone, so the result is that of :func:`generate_with_tries` for each index: the same draws, the
    pixels equal to rounding (batched FFTs may round differently, which ten projections amplify to a few
    levels at small sizes; at 48 px and more they were bit for bit equal on the CPU here)."""
    module = _module(name)
    batch = getattr(module, "render_float_batch", None)
    if batch is None or getattr(module, "prepare", None) is not None:
        return [generate_with_tries(name, seed, i, size, device=device) for i in indices]
    seed, size = _check_int("seed", seed, 0), _check_int("size", size, MIN_SIZE, MAX_SIZE)
    firsts = [int(np.random.default_rng(np.random.SeedSequence([seed, _check_int("index", i, 0)])).integers(0, 2**53))
              for i in indices]
    with single_thread():
        images, params = batch(firsts, size, device)
    out = []
    for i, first, img, drawn in zip(indices, firsts, images, params, strict=True):
        pixels = _to_uint8(img)
        accept = getattr(module, "accept", None)
        if pixels.std() >= MIN_STD and (accept is None or accept(pixels, drawn)):
            out.append((pixels, {"draw_seed": first, **drawn}, 1))
        else:
            out.append(generate_with_tries(name, seed, i, size, device=device))
    return out


def generate(name: str, seed: int, index: int, size: int = 256) -> tuple[np.ndarray, dict[str, Any]]:
    """Image ``index`` of the ``name`` collection ``seed``: ``(uint8 [size, size, 3], params)``.

    ``params`` is JSON-serialisable: the accepted try's ``draw_seed`` and the parameters it drew."""
    pixels, params, _ = generate_with_tries(name, seed, index, size)
    return pixels, params
