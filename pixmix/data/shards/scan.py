"""Indexing shard sets written by other tools (plain WebDataset tars, img2dataset's ``00000.tar``...): without this
project's ``manifest.json``, the shards are listed and read once to count their samples and find the fields that
hold the image and the label; the result is a manifest in this project's format (:func:`index_manifest`), which
``mixset index`` writes next to the shards so that later readers skip the scan.

Fields: the image is the most common of ``jpg``, ``jpeg``, ``png`` and ``webp``; the label is ``cls`` (an
integer in ASCII, as WebDataset and ``mixset shard`` write it) when every sample has one, else an integer
``label`` or ``cls`` key of the ``json`` field (``json:label``); img2dataset's ``txt`` is a caption, not a label.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pixmix.data.remote import Location, expand_braces, has_braces, import_extra, location
from pixmix.data.shards.manifest import SHARDS_FORMAT, SHARDS_VERSION
from pixmix.data.shards.tar import HashingReader
from pixmix.utils.errors import PixmixError

log = logging.getLogger("pixmix.data.shards")

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")
JSON_LABEL_KEYS = ("label", "cls")


def list_shards(target: str | os.PathLike[str] | Location) -> tuple[Location, list[str]]:
    """``(set folder, shard names relative to it)``: a brace pattern expanded, a local folder's ``**/*.tar``,
    an ``s3://``/``gs://`` prefix listed; ``http(s)`` folders cannot be listed (give a brace pattern)."""
    loc = location(target)
    if has_braces(loc):
        return expand_braces(loc)
    if loc.is_local:
        root = loc.path
        if not root.is_dir():
            raise PixmixError(f"{loc}: not a folder")
        return loc, sorted(str(p.relative_to(root)) for p in root.rglob("*.tar") if p.is_file())
    if loc.scheme in ("s3", "gs"):
        import_extra(loc.scheme)
        import fsspec

        fs, path = fsspec.core.url_to_fs(loc.url)
        prefix = path.rstrip("/") + "/"
        return loc, sorted(p[len(prefix):] for p in fs.find(prefix) if p.endswith(".tar"))
    raise PixmixError(f"{loc}: no manifest.json there, and {loc.scheme} folders cannot be listed: give the shards "
                      "as a brace pattern (e.g. .../{00000..00099}.tar), or write an index once with `mixset index`")


@dataclass
class ShardScan:
    """What one pass over a shard found."""

    name: str
    samples: int = 0
    bytes: int = 0
    sha256: str = ""
    fields: Counter[str] = field(default_factory=Counter)  # samples holding each field
    cls: list[int | None] = field(default_factory=list)  # per sample: the cls field's integer
    json_labels: list[int | None] = field(default_factory=list)  # per sample: json label or cls


def _samples(fh: Any, seekable: bool = False) -> Iterator[dict[str, bytes]]:
    """The samples of a tar, grouped by key (regular members only), with only ``cls`` and ``json`` read (other
    fields map to ``b""``). ``seekable``: a local file whose image data is skipped by seeking (headers only)."""
    key: str | None = None
    fields: dict[str, bytes] = {}
    with tarfile.open(fileobj=fh, mode="r:" if seekable else "r|") as tar:
        for member in tar:
            if not member.isreg():
                continue
            base = os.path.basename(member.name)
            k, _, name = base.partition(".")
            if key is not None and k != key:
                yield fields
                fields = {}
            key = k
            fields[name] = b""
            if name in ("cls", "json") or not seekable:  # a stream must pass over the data anyway (hashed)
                data = tar.extractfile(member)
                assert data is not None
                content = data.read()
                fields[name] = content if name in ("cls", "json") else b""
            if not seekable:
                tar.members = []  # type: ignore[attr-defined]  # keep no headers
        if key is not None:
            yield fields


def _int_or_none(data: bytes) -> int | None:
    try:
        return int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None


def _json_label(data: bytes | None) -> int | None:
    if data is None:
        return None
    try:
        meta = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict):
        return None
    value = next((meta[k] for k in JSON_LABEL_KEYS if k in meta), None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def scan_shard(folder: Location, name: str, *, digest: bool = True) -> ShardScan:
    """Read one shard front to back (streamed): samples, bytes, sha256, fields and labels. ``digest=False`` on a
    local shard reads its tar headers and labels only (no sha256: ``""``), which is far faster on large images."""
    loc = folder / name
    if not digest and loc.is_local:
        return _scan_headers(loc, name)
    result = ShardScan(name)
    with loc.open() as raw:
        fh = HashingReader(raw)
        try:
            for sample in _samples(fh):
                _count(result, sample)
            result.sha256, result.bytes = fh.drain()
        except (tarfile.TarError, EOFError) as exc:
            raise PixmixError(f"{folder / name}: unreadable shard ({exc})") from exc
    return result


def _scan_headers(loc: Location, name: str) -> ShardScan:
    result = ShardScan(name, bytes=loc.path.stat().st_size)
    try:
        with open(loc.path, "rb") as fh:
            for sample in _samples(fh, seekable=True):
                _count(result, sample)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise PixmixError(f"{loc}: unreadable shard ({exc})") from exc
    return result


def _count(result: ShardScan, sample: dict[str, bytes]) -> None:
    result.samples += 1
    result.fields.update(sample.keys())
    result.cls.append(_int_or_none(sample["cls"]) if "cls" in sample else None)
    result.json_labels.append(_json_label(sample.get("json")))


def choose_fields(scans: list[ShardScan]) -> tuple[str, str | None]:
    """``(image field, label field or None)`` of a set, from its scans (see the module's docstring)."""
    fields: Counter[str] = Counter()
    for scan in scans:
        fields.update(scan.fields)
    images = [f for f in IMAGE_FIELDS if fields[f]]
    if not images:
        shown = ", ".join(sorted(fields)) or "none"
        raise PixmixError(f"no image field ({', '.join(IMAGE_FIELDS)}) in the samples (fields: {shown})")
    image = max(images, key=lambda f: fields[f])
    cls = [c for s in scans for c in s.cls]
    if cls and all(c is not None and c >= 0 for c in cls):
        return image, "cls"
    labels = [c for s in scans for c in s.json_labels]
    if labels and all(c is not None and c >= 0 for c in labels):
        return image, "json:label"
    return image, None


def index_manifest(target: str | os.PathLike[str] | Location, *, require_labels: bool = True,
                   digest: bool = True) -> dict[str, Any]:
    """A ``pixmix-shards`` manifest (kind ``plain``, one view) of a set written by another tool, by scanning
    every shard once; logs which fields it uses. ``require_labels``: refuse a set without a label field;
    ``digest=False``: local shards are indexed from their headers, without sha256 (remote ones are streamed and
    hashed anyway)."""
    folder, names = list_shards(target)
    if not names:
        raise PixmixError(f"{target}: manifest.json not found and no *.tar shards to index: is it a finished "
                          "`mixset shard` or `mixset build` output, or a WebDataset shard set?")
    scans = [scan_shard(folder, name, digest=digest) for name in names]
    image, label = choose_fields(scans)
    if label is None and require_labels:
        raise PixmixError(f"{target}: no label in its samples (a cls field, or a json with an integer 'label'): a "
                          "training or evaluation set needs one")
    values = [c for s in scans for c in (s.cls if label == "cls" else s.json_labels)] if label else []
    classes = [str(i) for i in range(max((v for v in values if v is not None), default=-1) + 1)]
    log.warning("%s: no manifest.json, indexed %d shards by scanning: image field %r, label %s (`mixset index` "
                "writes the index once)", target, len(names), image, repr(label) if label else "none")
    total = sum(s.samples for s in scans)
    return {
        "format": SHARDS_FORMAT, "version": SHARDS_VERSION, "kind": "plain", "views": 1, "classes": classes,
        "image_field": image, "label_field": label, "samples": total, "items": total,
        "shards": [{"name": s.name, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256, "view": 0}
                   for s in scans],
        "config": {"dataset": "external", "split": "unknown", "seed": None, "indexed_from": str(target)},
        "failures": [],
    }


__all__ = ["IMAGE_FIELDS", "ShardScan", "choose_fields", "index_manifest", "list_shards", "scan_shard"]
