"""The manifest of a sharded dataset written by ``mixset shard``: what the training reader needs to know.

A shard set is a folder with ``manifest.json`` (written last) and ``shards/*.tar``. Every sample has
one image field (``jpg`` or ``png``), ``cls`` (the class index as ASCII digits) and ``json``
(provenance: source file, class name, view, seed, image sha256). Shards of pre-generated PixMix data
belong to one *view*: view ``v`` holds one PixMix view of every training image, so epoch ``e`` of
training reads the shards of view ``e % views`` and sees each image once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixmix.data.shards.manifest import read_manifest
from pixmix.utils.errors import PixmixError

SHARDS_FORMAT = "pixmix-shards"
SHARDS_VERSION = 1
KINDS = ("plain", "pixmix", "corrupted")


@dataclass(frozen=True)
class ShardRecord:
    """One shard as the manifest records it."""

    name: str  # relative to the set's folder
    samples: int
    bytes: int
    sha256: str
    view: int = 0


@dataclass(frozen=True)
class ShardSet:
    """A finished shard set: its shards, classes and how its samples were made."""

    folder: Path
    kind: str  # "plain" (images for online augmentation), "pixmix" (pre-generated views), "corrupted" (-C sets)
    views: int
    classes: tuple[str, ...]
    image_field: str
    shards: tuple[ShardRecord, ...]
    config: dict[str, Any]

    @property
    def recipe_name(self) -> str | None:
        """The recipe the set was made for, from what ``mixset shard`` records in the manifest's config: the
        recipe of PixMix views (``config.recipe.name``), else the dataset's (``cifar*``: ``"cifar"``, other
        datasets: ``"imagenet"``); ``None`` when the manifest records neither."""
        recipe = self.config.get("recipe")
        if isinstance(recipe, dict) and isinstance(recipe.get("name"), str):
            return recipe["name"]
        dataset = self.config.get("dataset")
        if not isinstance(dataset, str):
            return None
        return "cifar" if dataset.startswith("cifar") else "imagenet"

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def view_shards(self, view: int) -> list[ShardRecord]:
        """The shards of one view (plain and corrupted sets have only view 0)."""
        return [s for s in self.shards if s.view == view % self.views]

    def path(self, shard: ShardRecord) -> Path:
        return self.folder / shard.name

    @classmethod
    def load(cls, folder: str | Path) -> ShardSet:
        """Read and check ``folder/manifest.json``; one-line PixmixError if it is not a finished shard set."""
        folder = Path(folder)
        path, raw = read_manifest(folder, {SHARDS_FORMAT: SHARDS_VERSION},
                                  "`mixset shard` (or `mixset shard merge`)")
        try:
            shards = tuple(ShardRecord(**s) for s in raw["shards"])
            result = cls(folder=folder, kind=raw["kind"], views=int(raw["views"]), classes=tuple(raw["classes"]),
                         image_field=raw["image_field"], shards=shards, config=dict(raw["config"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PixmixError(f"{path}: malformed manifest ({exc!r})") from exc
        if result.kind not in KINDS or result.views < 1 or not result.shards:
            raise PixmixError(f"{path}: malformed manifest (kind={result.kind!r}, views={result.views}, "
                             f"{len(result.shards)} shards)")
        return result


__all__ = ["KINDS", "SHARDS_FORMAT", "SHARDS_VERSION", "ShardRecord", "ShardSet"]
