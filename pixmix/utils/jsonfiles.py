"""Writing JSON files that other processes read: atomically, and without NaN (which is not JSON)."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (written as null), mapping keys as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, data: Any, *, sort_keys: bool = True,
               default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``data`` (indented) to ``path`` via a temporary file renamed into place, so a reader never
    sees half a file. The temporary name is unique: several processes or hosts may write the same file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=sort_keys, default=default) + "\n")
    tmp.replace(path)
    return path


__all__ = ["json_safe", "write_json"]
