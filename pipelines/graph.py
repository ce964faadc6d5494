"""The stage graph's vocabulary: a :class:`Stage` and its content hash (a leaf that every module of the
pipeline machinery shares: the planner, the executors and the report).

A stage's folder is keyed by the sha256 of its kind, its executor's version, the options that decide
its output and its inputs' hashes; ``stage.json`` in it, written last, holds that hash once it is done.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Bump a kind's version when its executor starts writing something different for the same config.
STAGE_VERSIONS = {"data": 1, "natural": 1, "weights": 1, "build": 1, "shard": 1, "train": 1, "eval": 1, "report": 1}
STAMP = "stage.json"


@dataclass(eq=False)
class Stage:
    """One node of the graph: what it computes (kind, config, inputs), how (options) and where (folder)."""

    kind: str
    name: str
    config: dict[str, Any]
    inputs: dict[str, Stage]
    options: dict[str, Any]  # how it runs (workers, device, launcher): not part of the hash
    hash: str = ""
    folder: Path = Path()
    external: bool = False  # the user's own data: never written, never stamped
    variants: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        """``kind/folder-name`` (or ``kind/name (external)``): how logs and errors name the stage."""
        return f"{self.kind}/{self.folder.name}" if not self.external else f"{self.kind}/{self.name} (external)"

    @property
    def stamp(self) -> Path:
        """``stage.json``: written last, when the stage is done."""
        return self.folder / STAMP

    def read_stamp(self) -> dict[str, Any] | None:
        """The stamp, or None when missing or unreadable."""
        try:
            return json.loads(self.stamp.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def up_to_date(self) -> bool:
        """Whether the stage is done for its current hash (the user's own data always is)."""
        if self.external:
            return True
        stamp = self.read_stamp()
        return stamp is not None and stamp.get("hash") == self.hash


def stage_hash(kind: str, config: dict[str, Any], inputs: dict[str, Stage]) -> str:
    """sha256 of the kind, its executor's version, the config and the inputs' hashes."""
    payload = {"kind": kind, "version": STAGE_VERSIONS[kind], "config": config,
               "inputs": {role: s.hash for role, s in sorted(inputs.items())}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

