"""Producing the planned items: one encoded sample (or an error line) per item, in plan order.

Items are made in worker processes (FVis in batches on the chosen device) but yielded in order, so
the shards do not depend on the number of workers. A bad item becomes an error string, not an
exception: one broken file must not stop a build.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import groupby
from pathlib import Path
from typing import Any

from PIL import Image

from mixset.build.config import BuildConfig
from mixset.build.plan import MAX_IMAGE_BYTES, Item
from pixmix.data.images import resize_shorter, to_rgb
from pixmix.data.shards.tar import to_bytes
from pixmix.utils.runtime import limit_threads


@dataclass(frozen=True)
class Produced:
    """One item made: its sample key, encoded image (None when it failed), metadata and pixel hash."""

    key: str
    image: bytes | None
    fmt: str
    meta: dict[str, Any]
    content_hash: str
    error: str = ""


def _normalise(image: Image.Image, size: int) -> Image.Image:
    """8-bit RGB (16-bit and other modes scaled, not clipped: :func:`~pixmix.data.images.to_rgb`), shorter
    side ``size`` (aspect kept)."""
    return resize_shorter(to_rgb(image), size)


def produce(item: Item, image_size: int, quality: int, photo_format: str) -> Produced:
    """Make one sample (in a worker process). Bad input becomes an error string, not an exception."""
    key = _key(item)
    meta = _base_meta(item)
    try:
        image, meta["origin"] = _make(item, image_size)
    except Exception as exc:  # noqa: BLE001 - one bad item must not stop the build; it is reported
        return Produced(key, None, "", meta, "", error=f"{key}: {exc}")
    return _encoded(key, image, photo_format, quality, meta)


def _make(item: Item, image_size: int) -> tuple[Image.Image, dict[str, Any]]:
    """The image of one item and its origin (how to make or find it again)."""
    c = item.collection
    if c.kind == "procedural":
        from mixset.sources.procedural import generate_fractal

        pixels, params, tries = generate_fractal(item.seed, item.index, size=image_size, kinds=c.generator_kinds)
        # "mixset.procedural" is the generator's recorded name (its module moved to mixset.sources):
        # kept so that sets built before and after the move are byte-identical.
        return Image.fromarray(pixels), {"generator": "mixset.procedural", "seed": item.seed, "index": item.index,
                                         "tries": tries, "params": params.to_json()}
    if c.kind == "generator":
        from mixset.sources.generators import generate_with_tries

        pixels, gen_params, tries = generate_with_tries(c.generator, item.seed, item.index, size=image_size)
        return Image.fromarray(pixels), _generator_origin(item, tries, gen_params)
    from pixmix.data.images import open_image

    assert item.path is not None
    if c.kind == "urls":
        _fetch_image(item)
    with open_image(Path(item.path), min_side=image_size) as im:  # refuses non-images and bombs
        return _normalise(im, image_size), dict(item.origin)


def _generator_origin(item: Item, tries: int, params: dict[str, Any]) -> dict[str, Any]:
    """How to make a generated image again: generator, collection seed, index, tries and drawn parameters."""
    return {"generator": item.collection.generator, "seed": item.seed, "index": item.index, "tries": tries,
            "params": params}


def _fetch_image(item: Item) -> None:
    """Download a "urls" item into the build cache unless an earlier (possibly interrupted) build did."""
    from mixset.sources.fetch import download

    assert item.path is not None
    dest = Path(item.path)
    origin = dict(item.origin)
    if not dest.exists():  # complete downloads only: fetch writes to .part and renames when done
        download(origin["url"], dest, sha256=origin.get("sha256") or None, max_bytes=MAX_IMAGE_BYTES,
                 retries=2, timeout=30.0)


def _key(item: Item) -> str:
    return f"{item.collection.name}-{item.index:08d}"


def _base_meta(item: Item) -> dict[str, Any]:
    c = item.collection
    return {"source": c.source, "collection": c.name, "licence": c.licence, "index": item.index}


def _encoded(key: str, image: Image.Image, fmt: str, quality: int, meta: dict[str, Any]) -> Produced:
    """Encode once; record size, format and sha256 in ``meta``; hash the pixels for de-duplication."""
    data = to_bytes(image, fmt, quality)
    meta.update(width=image.width, height=image.height, format=fmt, sha256=hashlib.sha256(data).hexdigest())
    content = hashlib.sha256(image.tobytes() + f"{image.size}".encode()).hexdigest()
    return Produced(key, data, fmt, meta, content)


def _produce_star(args: tuple[Item, int, int, str]) -> Produced:
    return produce(*args)


DEVICE_BATCH = 64  # generator images rendered together on a GPU (Spectrum: one kernel per operation for all)


def _route(item: Item, on_gpu: bool) -> str:
    """Where an item is made: ``fvis`` (batched on the device), ``device`` (a torch generator on a GPU) or
    ``workers`` (CPU worker processes)."""
    c = item.collection
    if c.kind == "fvis":
        return "fvis"
    if on_gpu and c.kind == "generator":
        from mixset.sources.generators import DEVICE_GENERATORS

        return "device" if c.generator in DEVICE_GENERATORS else "workers"
    return "workers"


def produced(items: list[Item], config: BuildConfig) -> Iterator[Produced]:
    """Produce items in order: FVis in batches on the chosen device, the torch generators on a GPU when the
    build has one, the rest in worker processes."""
    device = config.resolved_device()
    for route, group in groupby(items, key=lambda item: _route(item, device.type != "cpu")):
        group_items = list(group)
        if route == "fvis":
            yield from _produce_fvis(group_items, config)
            continue
        if route == "device":
            yield from produce_on_device(group_items, config, device)
            continue
        args = ((item, config.image_size, config.quality, config.photo_format) for item in group_items)
        processes, threads = config.worker_plan()  # at most the usable CPUs, unless --oversubscribe
        if processes == 1:
            yield from map(_produce_star, args)
            continue
        # Not fork: torch (FVis) may already run threads in this process, which a fork can deadlock.
        ctx = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "forkserver")
        with ctx.Pool(processes, initializer=limit_threads, initargs=(threads,)) as pool:
            yield from pool.imap(_produce_star, args, chunksize=4)


def produce_on_device(items: list[Item], config: BuildConfig, device: Any) -> Iterator[Produced]:
    """Generator items made ``DEVICE_BATCH`` at a time on ``device`` (:func:`~mixset.sources.generators.
    generate_batch`: the draws of the CPU path; pixels equal to rounding). The origin records the device."""
    from mixset.sources.generators import generate_batch

    for _, same in groupby(items, key=lambda item: (item.collection.name, item.seed)):
        chunk_items = list(same)
        for start in range(0, len(chunk_items), DEVICE_BATCH):
            chunk = chunk_items[start: start + DEVICE_BATCH]
            c = chunk[0].collection
            try:
                made = generate_batch(c.generator, chunk[0].seed, [i.index for i in chunk], config.image_size,
                                      str(device))
            except Exception as exc:  # noqa: BLE001 - reported per item, as the CPU path does
                yield from (Produced(_key(i), None, "", _base_meta(i), "", error=f"{_key(i)}: {exc}") for i in chunk)
                continue
            for item, (pixels, params, tries) in zip(chunk, made, strict=True):
                meta = dict(_base_meta(item), origin=dict(_generator_origin(item, tries, params), device=str(device)))
                yield _encoded(_key(item), Image.fromarray(pixels), config.photo_format, config.quality, meta)


def _produce_fvis(items: list[Item], config: BuildConfig) -> Iterator[Produced]:
    from mixset.sources.fvis import DEFAULT_LAYERS, fvis_images

    specs = {(spec.model, spec.layer): replace(spec, activation=config.fvis_activation)
             for layers in DEFAULT_LAYERS.values() for spec in layers}
    entries = [(specs[(o["model"], o["layer"])], int(o["channel"])) for o in (dict(i.origin) for i in items)]
    checkpoints = {model: Path(path) for model, path in config.fvis_checkpoints}
    rendered = fvis_images(plan=entries, size=config.fvis_size, steps=config.fvis_steps, seed=config.seed,
                           device=config.resolved_device(), batch=config.fvis_batch, weights=config.fvis_weights,
                           checkpoints=checkpoints)
    for item, (image, render_meta) in zip(items, rendered):
        meta = dict(_base_meta(item), origin=render_meta)
        yield _encoded(_key(item), _normalise(image, config.image_size), config.photo_format, config.quality, meta)


__all__ = ["Produced", "produce", "produce_on_device", "produced"]
