"""Reading ``manifest.json``, the file written last by ``mixset build`` and ``mixset shard``: one reader
for the shard-set loader, the mixing-set reader and ``mixset verify``/``info``, so a missing, truncated
or foreign manifest reads the same everywhere."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pixmix.utils.errors import PixmixError

MANIFEST = "manifest.json"


def read_manifest(folder: str | Path, accepted: Mapping[str, int], made_by: str) -> tuple[Path, dict[str, Any]]:
    """``(path, manifest)`` of ``folder/manifest.json`` whose ``format`` is one of ``accepted`` at its
    version; a one-line :class:`PixmixError` naming the file and the command (``made_by``) that writes it
    otherwise."""
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise PixmixError(f"{path} not found: is {folder} a finished {made_by} output? "
                          f"(re-run {made_by} to finish it)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PixmixError(f"{path}: unreadable or truncated manifest ({' '.join(str(exc).split())}); re-run "
                          f"{made_by} to write it again") from exc
    name, version = (manifest.get("format"), manifest.get("version")) if isinstance(manifest, dict) else (None, None)
    if not isinstance(name, str) or name not in accepted or accepted[name] != version:
        wanted = " or ".join(f"{known} v{number}" for known, number in accepted.items())
        raise PixmixError(f"{path}: not a {wanted} manifest (format={name!r}, version={version!r})")
    return path, manifest
