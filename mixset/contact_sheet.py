"""A contact sheet of a built set: a labelled grid of samples per group (source, view, ...), as a PNG.

One band per group, always: the shards are read (tar headers and each sample's json; an image only
when its tile is drawn) until every band is full, so a source that only appears in a late shard gets
its band too. Each band is labelled with its group and how many samples it has; each tile with what
it is (the source and model/layer/unit of an FVis, the generator or fractal kind of a generated
picture, the class, view, corruption and severity of a ``mixset shard`` sample).
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, ImageDraw, ImageFont

from pixmix.data.shards.tar import MemberRef, ShardInfo, index_shard

TILE = 96
PER_ROW = 8
ROWS_PER_SOURCE = 2
LABEL_H = 18  # the band's label line
PAD = 4
BACKGROUND = (24, 24, 24)
IMAGE_FIELDS = ("jpg", "png", "webp")

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass
class Band:
    """One group of the sheet: the samples shown (keys, captions) and how many of the group were read."""

    name: str
    keys: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    tiles: list[Image.Image] = field(default_factory=list, repr=False)
    seen: int = 0
    random_init: set[str] = field(default_factory=set)  # models of the FVis shown rendered with fallback weights


@dataclass(frozen=True)
class ContactSheet:
    """What a sheet shows: per band (in drawing order) the keys of its tiles and its sample count.

    ``counts`` are the caller's ``totals`` where given, else the samples read; ``complete`` says every
    shard was read to the end (otherwise a count read is a lower bound).
    """

    path: Path
    bands: dict[str, list[str]]
    counts: dict[str, int]
    captions: dict[str, list[str]]
    complete: bool
    band_top: dict[str, int]  # the y of each band's label line, for readers of the PNG
    labels: dict[str, str]  # each band's label, as drawn (before any cut to the sheet's width)


def default_group(meta: Mapping[str, Any]) -> str:
    """The band of a mixing-set sample: its source."""
    return str(meta.get("source", "unknown source"))


def write_contact_sheet(out: Path, shards: Sequence[ShardInfo], path: Path,
                        group: Callable[[dict[str, Any]], str] = default_group,
                        groups: int | Sequence[str] | None = None, *,
                        totals: Mapping[str, int] | None = None,
                        caption: Callable[[dict[str, Any]], str] | None = None) -> ContactSheet:
    """Up to ``PER_ROW * ROWS_PER_SOURCE`` samples of each group (by default the source), one band per group.

    ``groups``: the groups to expect (their names, in band order, or how many there are), so reading
    stops once all of them are full. ``totals``: the number of samples of each group in the whole set
    (the manifest's), shown in the band labels, also a band order and a stop rule. With neither, every
    shard's headers and json are read, so no group is missed. ``caption``: a tile's label (default
    :func:`describe`).
    """
    wanted = PER_ROW * ROWS_PER_SOURCE
    expected: int | Collection[str] | None = groups if isinstance(groups, int) else None
    if not isinstance(groups, int) and (groups is not None or totals is not None):
        expected = list(groups) if groups is not None else [g for g, n in (totals or {}).items() if n > 0]
    bands, complete = _read_bands(out, shards, group, caption or describe, wanted,
                                  lambda b: _full(b, expected, totals, wanted))
    order = _band_order(bands, groups, totals)
    for name in order:  # a group the caller names gets a band (saying "no samples") even if none was read
        bands.setdefault(name, Band(name))
    counts = {name: (totals[name] if totals is not None and name in totals else bands[name].seen) for name in order}
    labels = {name: _band_label(bands[name], counts[name], exact=totals is not None) for name in order}
    sheet, tops = _draw(order, bands, labels)
    # A unique temporary name: several ranks (on several hosts) may write the same sheet at once.
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    sheet.save(tmp, format="PNG")
    tmp.replace(path)
    return ContactSheet(path, {n: bands[n].keys for n in order}, counts, {n: bands[n].captions for n in order},
                        complete, tops, labels)


def _full(bands: Mapping[str, Band], expected: int | Collection[str] | None,
          totals: Mapping[str, int] | None, wanted: int) -> bool:
    """Every expected band holds all the tiles it can (``wanted``, or fewer if the group is smaller)."""
    if expected is None:
        return False  # the groups are unknown: a later shard may hold a new one
    if isinstance(expected, int):
        return len(bands) >= expected and all(len(b.tiles) >= wanted for b in bands.values())
    need = {name: min(wanted, (totals or {}).get(name, wanted)) for name in expected}
    return all(name in bands and len(bands[name].tiles) >= n for name, n in need.items() if n > 0)


def _read_bands(out: Path, shards: Sequence[ShardInfo], group: Callable[[dict[str, Any]], str],
                caption: Callable[[dict[str, Any]], str], wanted: int,
                full: Callable[[Mapping[str, Band]], bool]) -> tuple[dict[str, Band], bool]:
    """Read shards in order (headers, each json, and the images of tiles drawn) until ``full``."""
    bands: dict[str, Band] = {}
    for info in shards:
        shard = out / info.name
        with open(shard, "rb") as fh:  # shards can be hundreds of MB: only the members needed are read
            for key, refs in index_shard(shard):
                meta = _meta(fh, refs.get("json"))
                name = _group_of(group, meta)
                band = bands.setdefault(name, Band(name))
                band.seen += 1
                if len(band.tiles) >= wanted:
                    continue
                band.random_init.update(_random_init(meta))
                band.keys.append(key)
                band.captions.append(caption(meta))
                band.tiles.append(_tile_of(fh, refs))
                if full(bands):
                    return bands, False
    return bands, True


def _random_init(meta: Mapping[str, Any]) -> list[str]:
    """The model of an FVis rendered with random-init fallback weights (said once, in its band's label)."""
    origin = meta.get("origin")
    if isinstance(origin, dict) and str(origin.get("weights", "")).startswith("random-init"):
        return [str(origin.get("model", "?"))]
    return []


def _group_of(group: Callable[[dict[str, Any]], str], meta: dict[str, Any]) -> str:
    try:
        return str(group(meta))
    except (KeyError, TypeError, ValueError):
        return "unlabelled"


def _read(fh: BinaryIO, ref: MemberRef) -> bytes:
    fh.seek(ref.offset)
    return fh.read(ref.size)


def _meta(fh: BinaryIO, ref: MemberRef | None) -> dict[str, Any]:
    if ref is None:
        return {}
    try:
        meta = json.loads(_read(fh, ref))
    except (ValueError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _tile_of(fh: BinaryIO, refs: Mapping[str, MemberRef]) -> Image.Image:
    """The square tile of a sample's image; a grey tile with a cross when it has none or it is unreadable."""
    field_name = next((f for f in IMAGE_FIELDS if f in refs), None)
    if field_name is not None:
        try:
            with Image.open(io.BytesIO(_read(fh, refs[field_name]))) as im:
                return _tile(im.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError):
            pass
    tile = Image.new("RGB", (TILE, TILE), (70, 70, 70))
    ImageDraw.Draw(tile).line([(0, 0), (TILE, TILE)], fill=(200, 60, 60), width=2)
    return tile


def _natural(name: str) -> list[Any]:
    """Sort key: "view 2" before "view 10"."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


def _band_order(bands: Mapping[str, Band], groups: int | Sequence[str] | None,
                totals: Mapping[str, int] | None) -> list[str]:
    """The caller's order (``groups`` names, else ``totals``), then the other bands read, naturally sorted.

    A group the caller names gets a band even when no sample of it was read (labelled "no samples")."""
    named = list(groups) if groups is not None and not isinstance(groups, int) else list(totals or {})
    first = list(dict.fromkeys(named))
    return first + sorted((b for b in bands if b not in first), key=_natural)


def _band_label(band: Band, count: int, exact: bool) -> str:
    """``name: N samples, first K shown``; without the caller's totals N is what was read (``N samples read``)."""
    shown = len(band.tiles)
    if count == 0:
        return f"{band.name}: no samples" + ("" if exact else " read")
    if shown == 0:
        return f"{band.name}: {count} samples, none found in the shards read"
    samples = f"{count} sample{'s' if count != 1 else ''}{'' if exact else ' read'}"
    rest = "all shown" if shown == count else f"first {shown} shown"
    notes = f" (random-init weights: {', '.join(sorted(band.random_init))})" if band.random_init else ""
    return f"{band.name}: {samples}, {rest}{notes}"


def _draw(order: Sequence[str], bands: Mapping[str, Band],
          labels: Mapping[str, str]) -> tuple[Image.Image, dict[str, int]]:
    band_h = LABEL_H + ROWS_PER_SOURCE * (TILE + PAD)
    sheet = Image.new("RGB", (PER_ROW * (TILE + PAD) + PAD, max(1, len(order)) * band_h + PAD), BACKGROUND)
    draw = ImageDraw.Draw(sheet, "RGBA")
    tops: dict[str, int] = {}
    for s, name in enumerate(order):
        top = tops[name] = PAD + s * band_h
        band = bands[name]
        label = _fit(draw, labels[name], _font(13), sheet.width - 2 * PAD)
        draw.text((PAD, top + 2), label, fill=(240, 240, 240), font=_font(13))
        for i, (tile, text) in enumerate(zip(band.tiles, band.captions)):
            x, y = PAD + (i % PER_ROW) * (TILE + PAD), top + LABEL_H + (i // PER_ROW) * (TILE + PAD)
            sheet.paste(tile, (x, y))
            _caption(draw, x, y, text)
    return sheet, tops


def _caption(draw: ImageDraw.ImageDraw, x: int, y: int, text: str) -> None:
    """Up to two lines, on a dark strip at the bottom of the tile, each cut to the tile's width."""
    font = _font(10)
    # Spaces doubled: the small font's are narrow enough to run words together.
    lines = [_fit(draw, line.replace(" ", "  "), font, TILE - 4) for line in text.splitlines()[:2] if line]
    if not lines:
        return
    line_h = 11
    strip = len(lines) * line_h + 2
    draw.rectangle([x, y + TILE - strip, x + TILE - 1, y + TILE - 1], fill=(0, 0, 0, 170))
    for n, line in enumerate(lines):
        draw.text((x + 2, y + TILE - strip + 1 + n * line_h), line, fill=(255, 255, 255), font=font)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Font, width: int) -> str:
    """``text``, or its start and end around an ellipsis (a unit number or file suffix stays readable)."""
    if draw.textlength(text, font=font) <= width:
        return text
    head, tail = text[: len(text) // 2], text[len(text) // 2:]
    while head and draw.textlength(f"{head}…{tail}", font=font) > width:
        head, tail = (head[:-1], tail) if len(head) >= len(tail) else (head, tail[1:])
    return f"{head}…{tail}"


@lru_cache(maxsize=4)
def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError, TypeError):  # no FreeType: the built-in bitmap font
        return ImageFont.load_default()


def describe(meta: Mapping[str, Any]) -> str:
    """A tile's caption (two lines): what the sample is, from its json."""
    found = meta.get("origin")
    origin: Mapping[str, Any] = found if isinstance(found, dict) else {}
    if "class" in meta or "label" in meta:  # a `mixset shard` sample
        if "corruption" in meta:
            first = f"{meta['corruption']} s{meta.get('severity', '?')}"
        else:
            first = f"view {meta['view']}" if "view" in meta else str(meta.get("dataset", ""))
        return f"{first}\n{meta.get('class', '?')} ({meta.get('label', '?')})"
    source = str(meta.get("source", "?"))
    if "model" in origin:
        return f"{source} {origin['model']}\n{origin.get('layer', '?')} u{origin.get('channel', '?')}"
    if "generator" in origin:
        params = origin.get("params")
        kind = params.get("kind") if isinstance(params, dict) else None
        if origin["generator"] == "mixset.procedural":
            return f"{source}\nfractal {kind or ''}".rstrip()
        return f"{source}\n{origin['generator']}{f' {kind}' if kind else ''}"
    where = origin.get("member") or origin.get("file") or origin.get("url") or ""
    return f"{source} {meta.get('collection', '')}".rstrip() + (f"\n{os.path.basename(str(where))}" if where else "")


def _tile(image: Image.Image) -> Image.Image:
    w, h = image.size
    side = min(w, h)
    square = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    return square.resize((TILE, TILE), Image.Resampling.BILINEAR)


__all__ = ["Band", "ContactSheet", "default_group", "describe", "write_contact_sheet"]
