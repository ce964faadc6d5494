"""Reading a mixing set built by ``mixset build`` as a random-access sequence of PIL images.

Plugs into :class:`pixmix.data.wrappers.PixMixDataset` / :class:`PixMixTransform` as their ``mixing_set``
(they draw pictures uniformly with replacement, so random access matters). Only the tar headers
are read at open; each picture is read and decoded on access.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from PIL import Image

from pixmix.data.images import open_image, to_rgb
from pixmix.data.remote import Location, RemoteOptions, location
from pixmix.data.shards.manifest import find_manifest, unfinished
from pixmix.data.shards.tar import MemberRef, index_shard, read_member
from pixmix.utils.errors import PixmixError

IMAGE_FIELDS = ("png", "jpg", "webp", "jpeg")
MANIFEST_FORMAT = "pixmix-mixset"  # what mixset build writes; the reader checks it
MANIFEST_VERSION = 1


class MixingShards(Sequence[Image.Image]):
    """The pictures of a built mixing set (``folder/manifest.json`` and its shards), optionally only some sources.

    ``folder`` may be a URL (:mod:`pixmix.data.remote`; each picture is then one ranged read, so pass
    ``options`` with a cache folder for remote sets used many times). A set of plain WebDataset tars without a
    manifest (or a brace pattern of shards) is read too: every image of its shards is a picture.
    """

    def __init__(self, folder: str | os.PathLike[str] | Location, sources: Sequence[str] | None = None,
                 options: RemoteOptions | None = None) -> None:
        self.folder = location(folder, options)
        names, self.folder = _shard_names(self.folder, sources)
        #: Members left out because they are not regular files (symbolic links...), one message each.
        self.skipped: list[str] = []
        self.refs: list[MemberRef] = [ref for name in names
                                      for ref in self._pictures(self.folder / name, sources, self.skipped)]
        if not self.refs:
            of = " of " + ",".join(sources) if sources else ""
            raise PixmixError(f"{self.folder}: no pictures{of} in this mixing set")

    @staticmethod
    def _pictures(shard: Location, sources: Sequence[str] | None, skipped: list[str]) -> list[MemberRef]:
        """Where the image field of each sample of ``shard`` lies (of the given sources only, if any); members
        that are not regular files are reported (logged and listed in ``skipped``)."""
        refs = []
        for _key, fields in index_shard(shard, skipped):
            image = next((f for f in IMAGE_FIELDS if f in fields), None)
            if image is None:
                continue
            if sources is not None and json.loads(read_member(fields["json"]))["source"] not in sources:
                continue
            refs.append(fields[image])
        return refs

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> Image.Image:  # type: ignore[override]
        ref = self.refs[index]
        # Shards are untrusted input too: allow-listed formats, bomb check before decoding.
        with open_image(read_member(ref), name=f"{ref.shard}@{ref.offset}") as im:
            return to_rgb(im)


def _shard_names(folder: Location, sources: Sequence[str] | None) -> tuple[list[str], Location]:
    """``(shard names, set folder)``: from ``manifest.json`` (read once per job), else the listed tars of a set
    written by another tool (which has no sources to choose from)."""
    from pixmix.data.remote import has_braces, once_per_job
    from pixmix.data.shards.scan import list_shards

    def read() -> tuple[list[str] | None, str]:
        if has_braces(folder):
            return None, ""
        _, manifest = find_manifest(folder, {MANIFEST_FORMAT: MANIFEST_VERSION}, "`mixset build`")
        return (None if manifest is None else [str(e["name"]) for e in manifest["shards"]]), ""

    names, _ = read() if folder.is_local else once_per_job(("mixset", folder.url), read)
    if names is not None:
        return names, folder
    if folder.is_local and unfinished(folder):
        raise PixmixError(f"{folder / 'manifest.json'} not found: is {folder} a finished `mixset build` output? "
                          "(re-run `mixset build` to finish it)")
    listed: Any = list_shards(folder) if folder.is_local else once_per_job(("mixset-list", folder.url),
                                                                           lambda: list_shards(folder))
    base, names = listed
    if not names:
        raise PixmixError(f"{folder}: manifest.json not found and no *.tar shards: is it a finished `mixset build` "
                          "output or a WebDataset set?")
    if sources:
        raise PixmixError(f"{folder}: a set without this project's manifest has no sources to choose from",
                          param="sources")
    return names, base.with_options(folder.options)

