"""A contact sheet of a built set: a labelled grid of samples per group (source, view, ...), as a PNG."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from pixmix.data.shards.tar import ShardInfo, iter_shard

TILE = 96
PER_ROW = 8
ROWS_PER_SOURCE = 2


def write_contact_sheet(out: Path, shards: Sequence[ShardInfo], path: Path,
                        group: Callable[[dict[str, Any]], str] = lambda meta: meta["source"],
                        groups: int | None = None) -> None:
    """Up to ``PER_ROW * ROWS_PER_SOURCE`` samples of each group (by default the source), one band per group.

    ``groups``: how many groups to expect, so reading stops only once all of them are full.
    """
    wanted = PER_ROW * ROWS_PER_SOURCE
    picks: dict[str, list[Image.Image]] = {}
    def full() -> bool:
        return bool(picks) and len(picks) >= (groups or 0) and all(len(t) >= wanted for t in picks.values())

    for info in shards:
        for sample in iter_shard(out / info.name):
            source = group(json.loads(sample.fields["json"]))
            tiles = picks.setdefault(source, [])
            if len(tiles) < wanted:
                field = next(f for f in sample.fields if f in ("jpg", "png", "webp"))
                with Image.open(io.BytesIO(sample.fields[field])) as im:
                    tiles.append(_tile(im.convert("RGB")))
                if full():  # stop reading: shards can be hundreds of MB
                    break
        if full():
            break
    label_h, pad = 18, 4
    band = label_h + ROWS_PER_SOURCE * (TILE + pad)
    sheet = Image.new("RGB", (PER_ROW * (TILE + pad) + pad, max(1, len(picks)) * band + pad), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for s, (source, tiles) in enumerate(sorted(picks.items())):
        top = pad + s * band
        draw.text((pad, top + 2), f"{source}: first {len(tiles)} samples", fill=(230, 230, 230))
        for i, tile in enumerate(tiles):
            sheet.paste(tile, (pad + (i % PER_ROW) * (TILE + pad), top + label_h + (i // PER_ROW) * (TILE + pad)))
    # A unique temporary name: several ranks (on several hosts) may write the same sheet at once.
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    sheet.save(tmp, format="PNG")
    tmp.replace(path)


def _tile(image: Image.Image) -> Image.Image:
    w, h = image.size
    side = min(w, h)
    square = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    return square.resize((TILE, TILE), Image.Resampling.BILINEAR)
