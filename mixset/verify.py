"""``mixset verify`` and ``mixset info``: recheck a built set against its manifest; summarise it.

The set may be a local folder or a URL (``http(s)://``, ``s3://``, ``gs://``, ``pipe:``; see
:mod:`pixmix.data.remote`): each shard is read once, as a stream, hashing and checking its samples on the way.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pixmix.data.remote import Location, location
from pixmix.data.shards.manifest import read_manifest as load_manifest
from pixmix.data.shards.mixing_set import IMAGE_FIELDS, MANIFEST_FORMAT, MANIFEST_VERSION
from pixmix.data.shards.shard_set import SHARDS_FORMAT, SHARDS_VERSION
from pixmix.data.shards.tar import HashingReader, iter_tar
from pixmix.utils.errors import PixmixError

Folder = str | os.PathLike[str] | Location

# What `mixset build` (mixing sets) and `mixset shard` (datasets) write; verify and info read both.
KNOWN = {MANIFEST_FORMAT: MANIFEST_VERSION, SHARDS_FORMAT: SHARDS_VERSION}


def read_manifest(folder: Folder) -> dict[str, Any]:
    """The manifest of a finished set (``mixset build`` or ``mixset shard``); a one-line error otherwise."""
    return load_manifest(folder, KNOWN, "`mixset build` or `mixset shard`")[1]


def verify(folder: Folder, decode: bool = True) -> list[str]:
    """Every problem found, one line each (empty: the set matches its manifest)."""
    folder = location(folder)
    manifest = read_manifest(folder)
    problems: list[str] = []
    keys: set[str] = set()
    total = 0
    for entry in manifest["shards"]:
        try:
            path = folder / entry["name"]
        except PixmixError:
            path = None
        if path is None or (folder.is_local and not _inside(folder.path, path.path)):
            problems.append(f"{folder}/{entry['name']}: outside the set {folder}; refusing this manifest entry")
            continue
        try:
            fh = path.open()
        except FileNotFoundError:
            problems.append(f"{path}: missing")
            continue
        except OSError as exc:
            problems.append(f"{path}: unreadable ({exc})")
            continue
        with fh:
            hashing = HashingReader(fh)
            count = _check_shard(path, hashing, manifest, keys, decode, problems)
            digest, size = _finish(hashing)
        if size != entry["bytes"] or digest != entry["sha256"]:
            problems.append(f"{path}: sha256/size differ from the manifest (got {size} bytes, {digest[:12]}...)")
        if count != entry["samples"]:
            problems.append(f"{path}: {count} samples, manifest says {entry['samples']}")
        total += count
    if total != manifest["samples"]:
        problems.append(f"{folder}: {total} samples in shards, manifest says {manifest['samples']}")
    return problems


def _inside(folder: Path, path: Path) -> bool:
    """Whether ``path`` (links followed) lies inside ``folder``."""
    return path.resolve().is_relative_to(folder.resolve())


def _finish(hashing: HashingReader) -> tuple[str, int]:
    """The shard's ``(sha256, size)`` once the checks have read it; a remote shard that fails now was
    reported by the reader already, and counts what was read."""
    try:
        return hashing.drain()
    except OSError:
        return hashing.sha256.hexdigest(), hashing.bytes


def _check_shard(path: Location, fh: HashingReader, manifest: dict[str, Any], keys: set[str], decode: bool,
                 problems: list[str]) -> int:
    """Check every sample of one shard (keys unique across the set); returns how many samples it holds."""
    count = 0
    try:
        for sample in _samples(path, fh):
            count += 1
            if sample.key in keys:
                problems.append(f"{path}: duplicate key {sample.key}")
            keys.add(sample.key)
            problems.extend(_check_sample(path, sample.key, sample.fields, manifest, decode))
    except ValueError as exc:  # an unreadable shard (iter_tar), or a sample json that is not JSON
        problems.append(str(exc))
    return count


def _samples(path: Location, fh: HashingReader) -> Any:
    """The samples of a shard stream; a broken tar is a one-line PixmixError naming it."""
    try:
        yield from iter_tar(fh)
    except PixmixError as exc:
        raise PixmixError(f"{path}: {exc}") from exc
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PixmixError(f"{path}: unreadable shard ({exc}); delete it and re-run the build to rewrite it") from exc


def _check_sample(path: Location, key: str, fields: Mapping[str, bytes], manifest: dict[str, Any],
                  decode: bool) -> list[str]:
    """One sample: a json, one image field whose sha256 its json records (and that decodes), and, in a
    dataset, a label that agrees with the manifest."""
    if manifest.get("config", {}).get("dataset") == "external":  # `mixset index` of another tool's set
        return _check_external(path, key, fields, manifest, decode)
    if "json" not in fields:
        return [f"{path}: sample {key} has no json field"]
    meta = json.loads(fields["json"])
    images = [f for f in fields if f in IMAGE_FIELDS]
    if len(images) != 1:
        return [f"{path}: sample {key} has {len(images)} image fields"]
    data = fields[images[0]]
    problems = _check_labelled(path, key, fields, meta, manifest) if manifest["format"] == SHARDS_FORMAT else []
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        problems.append(f"{path}: sample {key}: image sha256 differs from its json")
    if decode:
        problems.extend(_decode_problems(path, key, data))
    return problems


def _decode_problems(path: Location, key: str, data: bytes) -> list[str]:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a problem to report
        return [f"{path}: sample {key}: image does not decode ({exc})"]
    return []


def _check_external(path: Location, key: str, fields: Mapping[str, bytes], manifest: dict[str, Any],
                    decode: bool) -> list[str]:
    """A sample of a set indexed by ``mixset index`` (no per-sample json of ours): its image field (decodable)
    and, when the index names one, its label field."""
    image = manifest["image_field"]
    if image not in fields:
        return [f"{path}: sample {key} has no {image} field"]
    label = (manifest.get("label_field") or "").partition(":")[0]
    if label and label not in fields:
        return [f"{path}: sample {key} has no {label} field"]
    return _decode_problems(path, key, fields[image]) if decode else []


def _check_labelled(path: Location, key: str, fields: Mapping[str, bytes], meta: dict[str, Any],
                    manifest: dict[str, Any]) -> list[str]:
    """A dataset sample: the manifest's image field, and a ``cls`` that agrees with its json and the classes."""
    problems = []
    if manifest["image_field"] not in fields:
        problems.append(f"{path}: sample {key} has no {manifest['image_field']} field")
    try:
        label = int(fields["cls"])
    except (KeyError, ValueError):
        return problems + [f"{path}: sample {key} has no integer cls field"]
    if label != meta.get("label") or not 0 <= label < len(manifest["classes"]):
        problems.append(f"{path}: sample {key}: cls {label} disagrees with its json or the "
                        f"{len(manifest['classes'])} classes")
    return problems


def info(folder: Folder) -> str:
    """A summary of a finished set: counts, options, collections (mixing sets) or views (shard sets)."""
    m = read_manifest(folder)
    if m["format"] == SHARDS_FORMAT:
        return _shard_set_info(folder, m)
    lines = [f"{folder}: {m['samples']} samples in {len(m['shards'])} shard(s), "
             f"{sum(s['bytes'] for s in m['shards']) / 1e6:.1f} MB"]
    c = m["config"]
    lines.append(f"  options: sources={','.join(c['sources'])} seed={c['seed']} limit={c['limit']} "
                 f"image_size={c['image_size']} format={c['photo_format']} quality={c['quality']}")
    for name, r in sorted(m["collections"].items()):
        extra = f" ({r['error']})" if r["error"] else ""
        lines.append(f"  {r['source']}/{name} [{r['kind']}] {r['status']}: {r['samples']} samples, "
                     f"{r['duplicates']} duplicates, {r['rejected']} rejected; licence: {r['licence']}{extra}")
    if m["failures"]:
        lines.append(f"  {len(m['failures'])} item(s) failed, first: {m['failures'][0]}")
    lines.append(f"  contact sheet: {location(folder) / m['contact_sheet']}")
    return "\n".join(lines)


def _shard_set_info(folder: Folder, m: dict[str, Any]) -> str:
    c = m["config"]
    if c.get("dataset") == "external":  # indexed by `mixset index`: what the scan found, no options of ours
        return (f"{folder}: {m['samples']} samples in {len(m['shards'])} shard(s), "
                f"{sum(s['bytes'] for s in m['shards']) / 1e6:.1f} MB, written by another tool and indexed by "
                f"`mixset index`\n  image field {m['image_field']}, label field {m.get('label_field')}, "
                f"{len(m['classes'])} classes")
    lines = [f"{folder}: {m['samples']} samples of {m['items']} {c['dataset']} {c['split']} images in "
             f"{len(m['shards'])} shard(s), {sum(s['bytes'] for s in m['shards']) / 1e6:.1f} MB",
             f"  kind: {m['kind']}, {m['views']} view(s), {len(m['classes'])} classes, field {m['image_field']}, "
             f"seed {c['seed']}"]
    if c.get("recipe"):
        r = c["recipe"]
        lines.append(f"  PixMix: {r['name']} recipe, crop {r['crop_size']}, k={r['k']} beta={r['beta']} "
                     f"severity={r['severity']} ops={r['ops']} partners={r.get('partners', 'both')}, "
                     f"mixing set {c['mixset']}")
    if m["failures"]:
        lines.append(f"  {len(m['failures'])} image(s) skipped, first: {m['failures'][0]}")
    return "\n".join(lines)
