"""Reading a mixing set built by ``mixset build`` as a random-access sequence of PIL images.

Plugs into :class:`pixmix.data.wrappers.PixMixDataset` / :class:`PixMixTransform` as their ``mixing_set``
(they draw pictures uniformly with replacement, so random access matters). Only the tar headers
are read at open; each picture is read and decoded on access.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from pixmix.data.images import open_image, to_rgb
from pixmix.data.shards.manifest import read_manifest
from pixmix.data.shards.tar import MemberRef, index_shard, read_member
from pixmix.utils.errors import PixmixError

IMAGE_FIELDS = ("png", "jpg", "webp")
MANIFEST_FORMAT = "pixmix-mixset"  # what mixset build writes; the reader checks it
MANIFEST_VERSION = 1


class MixingShards(Sequence[Image.Image]):
    """The pictures of a built mixing set (``folder/manifest.json`` and its shards), optionally only some sources."""

    def __init__(self, folder: str | Path, sources: Sequence[str] | None = None) -> None:
        self.folder = Path(folder)
        _, manifest = read_manifest(self.folder, {MANIFEST_FORMAT: MANIFEST_VERSION}, "`mixset build`")
        #: Members left out because they are not regular files (symbolic links...), one message each.
        self.skipped: list[str] = []
        self.refs: list[MemberRef] = [ref for entry in manifest["shards"]
                                      for ref in self._pictures(self.folder / entry["name"], sources, self.skipped)]
        if not self.refs:
            of = " of " + ",".join(sources) if sources else ""
            raise PixmixError(f"{self.folder}: no pictures{of} in this mixing set")

    @staticmethod
    def _pictures(shard: Path, sources: Sequence[str] | None, skipped: list[str]) -> list[MemberRef]:
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
