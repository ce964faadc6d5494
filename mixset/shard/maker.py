"""Making the samples of a shard: plain images (resized, encoded once) or PixMix views.

A view ``v`` of item ``i`` draws its crop, flip, mixing picture and PixMix params from its own
generator ``generator_for(seed, i, v)``, exactly as :class:`pixmix.data.wrappers.PixMixTransform`
would with that generator, and views are mixed in batches (on the CPU or a GPU). Items are made a
chunk at a time, so memory stays bounded for shards of any size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from mixset.shard.config import ShardConfig
from mixset.shard.listing import Source
from mixset.shard.plan import ShardTask
from pixmix.data.images import resize_shorter
from pixmix.data.shards.tar import Sample, to_bytes

MIX_BATCH = 64  # views mixed together by the batched PixMix path
CHUNK = 256  # items made at a time: bounds memory (decoded views) whatever the shard size


@dataclass
class Maker:
    """Makes the samples of a shard. One per process; holds the source and, for views, the mixing set."""

    config: ShardConfig
    source: Source
    device: str = "cpu"
    threads: int = 1
    _mixing: Any = field(default=None, repr=False)

    def samples(self, task: ShardTask, failures: list[str]) -> Iterator[Sample]:
        """The samples of ``task`` in order, made a chunk at a time (memory stays bounded for
        shards of any size); a line per item that could not be made is appended to ``failures``."""
        with ThreadPoolExecutor(self.threads) if self.threads > 1 else _Serial() as pool:
            for start in range(0, len(task.items), CHUNK):
                items = task.items[start:start + CHUNK]
                made = pool.map(self._plain, items) if not self.config.pixmix else self._views(items, task.view, pool)
                for m in made:
                    if isinstance(m, str):
                        failures.append(m)
                    else:
                        yield m

    def all_samples(self, task: ShardTask) -> tuple[list[Sample], list[str]]:
        """Every sample of ``task`` and the failure lines, at once."""
        failures: list[str] = []
        return list(self.samples(task, failures)), failures

    # plain: the image resized (folders) or as it is (CIFAR), encoded once
    def _plain(self, index: int) -> Sample | str:
        try:
            side = self.config.stored_side
            image = self.source.load(index, min_side=side)
            if side is not None:
                image = resize_shorter(image, side)
        except Exception as exc:  # noqa: BLE001 - a bad file is reported, the shard goes on
            return f"{self._origin(index)}: {exc}"
        return self._encode(index, 0, image, {})

    # views: prepare each view (decode, crop, flip, mixing picture, params), mix in batches, encode
    def _views(self, items: Sequence[int], view: int, pool: Any) -> list[Sample | str]:
        import torch

        from pixmix.augment.params import PixMixParams

        prepared = list(pool.map(lambda i: self._prepare(i, view), items))
        ok = [p for p in prepared if not isinstance(p, str)]
        mixed: list[Any] = []
        config = self._pixmix_config
        for start in range(0, len(ok), MIX_BATCH):
            chunk = ok[start:start + MIX_BATCH]
            images = torch.stack([c[1] for c in chunk])
            pictures = torch.stack([c[2] for c in chunk])
            params = PixMixParams.cat([c[3] for c in chunk])
            mixed.extend(mix_views(images, pictures, params, config, self.device))
        by_index = {c[0]: (m, c[4]) for c, m in zip(ok, mixed, strict=True)}

        def encode(item: int | str) -> Sample | str:
            if isinstance(item, str):
                return item
            pixels, meta = by_index[item]
            from PIL import Image

            return self._encode(item, view, Image.fromarray(pixels.permute(1, 2, 0).numpy()), meta)

        return list(pool.map(encode, [p if isinstance(p, str) else p[0] for p in prepared]))

    def _prepare(self, index: int, view: int) -> tuple[int, Any, Any, Any, dict] | str:
        import torch

        from pixmix.augment.params import sample_params
        from pixmix.augment.transforms import to_uint8_tensor
        from pixmix.utils.seeding import derive_seed

        recipe = self._recipe
        seed = derive_seed(self.config.seed, index, view)
        gen = torch.Generator().manual_seed(seed)
        try:
            image = self.source.load(index)
            # Same draws, in the same order, as pixmix.data.wrappers.PixMixTransform with this generator.
            image = self._train_transform(image, gen)
            if recipe.partners == "augmented":  # no mixing set: the partner is always an augmented input
                picture_index, picture = None, image
            else:
                mixing = self.mixing_set()
                picture_index = int(torch.randint(len(mixing), (1,), generator=gen))
                picture = self._mixing_transform(mixing[picture_index], gen)
            params = sample_params(self._pixmix_config, 1, gen)
        except Exception as exc:  # noqa: BLE001
            return f"{self._origin(index)}: {exc}"
        return index, to_uint8_tensor(image), to_uint8_tensor(picture), params, {
            "seed": seed, "mixing_picture": picture_index}

    # Built once per maker rather than per item: the recipe (validated options) and what it derives.
    @cached_property
    def _recipe(self) -> Any:
        return self.config.recipe()

    @cached_property
    def _train_transform(self) -> Any:
        return self._recipe.train_transform()

    @cached_property
    def _mixing_transform(self) -> Any:
        return self._recipe.mixing_transform()

    @cached_property
    def _pixmix_config(self) -> Any:
        return self._recipe.pixmix().config

    def mixing_set(self) -> Any:
        if self._mixing is None:
            from pixmix.data.shards.mixing_set import MixingShards

            assert self.config.mixset is not None  # ShardConfig: only --partners augmented has none, and needs none
            self._mixing = MixingShards(self.config.mixset)
        return self._mixing

    def _origin(self, index: int) -> str:
        o = self.source.origin(index)
        return o.get("file") or f"{self.source.dataset}/{self.source.split}[{index}]"

    def _encode(self, index: int, view: int, image: Any, extra: dict[str, Any]) -> Sample:
        c = self.config
        data = to_bytes(image, c.format, c.quality)
        label = int(self.source.labels[index])
        meta = {"dataset": c.dataset, "split": self.source.split, "index": index, "view": view, "label": label,
                "class": self.source.classes[label], **self.source.origin(index), **extra,
                "width": image.width, "height": image.height, "format": c.format,
                "sha256": hashlib.sha256(data).hexdigest()}
        key = f"{index:09d}" if not c.pixmix else f"{index:09d}_v{view}"
        fields = {c.format: data, "cls": str(label).encode(), "json": json.dumps(meta, sort_keys=True).encode()}
        return Sample(key, fields)


class _Serial:
    """A stand-in for an executor that maps in the calling thread."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        return map(fn, items)


def mix_views(images: Any, pictures: Any, params: Any, config: Any, device: str) -> list[Any]:
    """PixMix uint8 ``[B, 3, H, W]`` batches with the batched path on ``device``; uint8 CPU images back."""
    import torch

    from pixmix.augment.pixmix import apply_batch

    if device != "cpu":
        images, pictures = images.to(device, non_blocking=True), pictures.to(device, non_blocking=True)
    out = apply_batch(images, pictures, params, config)
    # Round to the nearest level, as an 8-bit encoder of the float image would.
    quantised = out.mul_(255).round_().clamp_(0, 255).to(torch.int16).to(torch.uint8)
    return list(quantised.cpu())


__all__ = ["CHUNK", "MIX_BATCH", "Maker", "mix_views"]
