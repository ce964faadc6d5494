"""Reading ``manifest.json``, the file written last by ``mixset build`` and ``mixset shard``: one reader
for the shard-set loader, the mixing-set reader and ``mixset verify``/``info``, so a missing, truncated
or foreign manifest reads the same everywhere, in a local folder or at a URL (:mod:`pixmix.data.remote`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from pixmix.data.remote import Location, RemoteError, location
from pixmix.utils.errors import PixmixError

MANIFEST = "manifest.json"
# What `mixset shard` writes (and `mixset index` for other tools' sets); the shard-set reader checks it.
SHARDS_FORMAT = "pixmix-shards"
SHARDS_VERSION = 1


def unfinished(folder: Location) -> bool:
    """Whether a local folder without a manifest is an unfinished ``mixset shard``/``build`` output (its hidden
    state folder holds the stored options): such a set must be finished, not scanned as another tool's."""
    return any(p.is_dir() and (p / "config.json").exists() for p in folder.path.glob(".*"))


def read_manifest(folder: str | os.PathLike[str] | Location, accepted: Mapping[str, int],
                  made_by: str) -> tuple[Location, dict[str, Any]]:
    """``(location, manifest)`` of ``folder/manifest.json`` whose ``format`` is one of ``accepted`` at its
    version; a one-line :class:`PixmixError` naming the file and the command (``made_by``) that writes it
    otherwise. ``folder`` may be a URL (remote reads are retried)."""
    path, manifest = find_manifest(folder, accepted, made_by)
    if manifest is None:
        raise PixmixError(f"{path} not found: is {path.url[:-len(MANIFEST) - 1]} a finished {made_by} output? "
                          f"(re-run {made_by} to finish it)")
    return path, manifest


def find_manifest(folder: str | os.PathLike[str] | Location, accepted: Mapping[str, int],
                  made_by: str) -> tuple[Location, dict[str, Any] | None]:
    """As :func:`read_manifest`, but ``(location, None)`` when there is no manifest at all (a set written by
    another tool, which the caller may index by scanning its shards)."""
    folder = location(folder)
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        return path, None
    except RemoteError as exc:  # the network, not the file: say so rather than suggest rebuilding the set
        raise PixmixError(f"{path}: cannot be read ({exc.strerror})") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PixmixError(f"{path}: unreadable or truncated manifest ({' '.join(str(exc).split())}); re-run "
                          f"{made_by} to write it again") from exc
    name, version = (manifest.get("format"), manifest.get("version")) if isinstance(manifest, dict) else (None, None)
    if not isinstance(name, str) or name not in accepted or accepted[name] != version:
        wanted = " or ".join(f"{known} v{number}" for known, number in accepted.items())
        raise PixmixError(f"{path}: not a {wanted} manifest (format={name!r}, version={version!r})")
    return path, manifest
