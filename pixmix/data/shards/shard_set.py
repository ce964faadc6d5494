"""The manifest of a sharded dataset written by ``mixset shard``: what the training reader needs to know.

A shard set is a folder with ``manifest.json`` (written last) and ``shards/*.tar``. Every sample has
one image field (``jpg`` or ``png``), ``cls`` (the class index as ASCII digits) and ``json``
(provenance: source file, class name, view, seed, image sha256). Shards of pre-generated PixMix data
belong to one *view*: view ``v`` holds one PixMix view of every training image, so epoch ``e`` of
training reads the shards of view ``e % views`` and sees each image once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pixmix.data.remote import Location, RemoteOptions, has_braces, location, once_per_job
from pixmix.data.shards.manifest import SHARDS_FORMAT, SHARDS_VERSION, find_manifest, unfinished
from pixmix.utils.errors import PixmixError

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
    """A finished shard set: its shards, classes and how its samples were made.

    ``folder``: where it lives (a local folder or a URL, see :mod:`pixmix.data.remote`). ``label_field``:
    ``cls`` (this project's sets), or ``json:label`` for sets of other tools that keep it in their json.
    """

    folder: Location
    kind: str  # "plain" (images for online augmentation), "pixmix" (pre-generated views), "corrupted" (-C sets)
    views: int
    classes: tuple[str, ...]
    image_field: str
    shards: tuple[ShardRecord, ...]
    config: dict[str, Any]
    label_field: str = "cls"

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", location(self.folder))

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

    def path(self, shard: ShardRecord) -> Location:
        return self.folder / shard.name

    @classmethod
    def load(cls, folder: str | os.PathLike[str] | Location, options: RemoteOptions | None = None) -> ShardSet:
        """Read and check ``folder/manifest.json`` (``folder``: a local path or a URL); one-line PixmixError if it
        is not a finished shard set. A set without a manifest (plain WebDataset or img2dataset tars, or a brace
        pattern of shards) is indexed by scanning its shards (:mod:`pixmix.data.shards.scan`). Remote manifests
        and scans are read once per process and, under an initialised process group, by rank 0 only."""
        loc = location(folder, options)
        if loc.is_local and not has_braces(loc):
            return cls._parse(loc, *_manifest_or_scan(loc))
        key = ("shardset", loc.url)
        return cls._parse(_folder_of(loc), *once_per_job(key, lambda: _manifest_or_scan(loc)))

    @classmethod
    def _parse(cls, folder: Location, path: str, raw: dict[str, Any]) -> ShardSet:
        try:
            shards = tuple(ShardRecord(**s) for s in raw["shards"])
            result = cls(folder=folder, kind=raw["kind"], views=int(raw["views"]), classes=tuple(raw["classes"]),
                         image_field=raw["image_field"], shards=shards, config=dict(raw["config"]),
                         label_field=raw.get("label_field") or "cls")
        except (KeyError, TypeError, ValueError) as exc:
            raise PixmixError(f"{path}: malformed manifest ({exc!r})") from exc
        if result.kind not in KINDS or result.views < 1 or not result.shards:
            raise PixmixError(f"{path}: malformed manifest (kind={result.kind!r}, views={result.views}, "
                             f"{len(result.shards)} shards)")
        return result


def _folder_of(loc: Location) -> Location:
    """The folder of a set given as a brace pattern of shards (else ``loc`` itself)."""
    if not has_braces(loc):
        return loc
    from pixmix.data.remote import expand_braces

    return expand_braces(loc)[0]


def _manifest_or_scan(loc: Location) -> tuple[str, dict[str, Any]]:
    """``(where it came from, manifest)``: ``loc/manifest.json``, else an index made by scanning the shards."""
    if not has_braces(loc):
        path, raw = find_manifest(loc, {SHARDS_FORMAT: SHARDS_VERSION}, "`mixset shard` (or `mixset shard merge`)")
        if raw is not None:
            return str(path), raw
        if loc.is_local and unfinished(loc):
            raise PixmixError(f"{path} not found: is {loc} a finished `mixset shard` output? (re-run `mixset shard` "
                              "or `mixset shard merge` to finish it)")
    from pixmix.data.shards.scan import index_manifest

    return f"{loc} (scanned)", index_manifest(loc, digest=False)  # the loader needs no sha256


__all__ = ["KINDS", "SHARDS_FORMAT", "SHARDS_VERSION", "ShardRecord", "ShardSet"]
