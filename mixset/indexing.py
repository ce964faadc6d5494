"""``mixset index``: write the manifest of a shard set made by another tool (plain WebDataset, img2dataset), so
that readers use it instead of scanning every shard on each start (:mod:`pixmix.data.shards.scan`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pixmix.data.remote import Location, expand_braces, has_braces, location
from pixmix.data.shards.manifest import MANIFEST
from pixmix.data.shards.scan import index_manifest
from pixmix.utils.errors import PixmixError


def upload_command(local: Path, folder: Location) -> str:
    """The one command that puts ``local`` next to the shards of a remote set."""
    target = f"{folder.url.rstrip('/')}/{MANIFEST}"
    if folder.scheme == "s3":
        return f"aws s3 cp {local} {target}"
    if folder.scheme == "gs":
        return f"gsutil cp {local} {target}"
    return f"copy {local} to {target} (where the server serves the shards)"


def write_index(target: str | os.PathLike[str], out: Path | None = None, *,
                force: bool = False) -> tuple[Path, dict[str, Any], str | None]:
    """Scan ``target`` and write its manifest: ``(where, manifest, upload command or None)``. A local folder gets
    ``folder/manifest.json``; a remote set's manifest is written to ``out`` (default ``./manifest.json``) with the
    command that uploads it. An existing manifest is replaced only with ``force``."""
    loc = location(target)
    folder = expand_braces(loc)[0] if has_braces(loc) else loc
    if out is None:
        out = folder.path / MANIFEST if folder.is_local else Path(MANIFEST)
    if out.exists() and not force:
        raise PixmixError(f"{out} exists: pass --force to replace it", param="force")
    manifest = index_manifest(loc)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(out)
    return out, manifest, None if folder.is_local else upload_command(out, folder)


__all__ = ["upload_command", "write_index"]
