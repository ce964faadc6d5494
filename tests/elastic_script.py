"""Run by tests/test_resume.py, alone or under torchrun: ``pixmix train`` with the keys of every batch recorded.

Usage: ``elastic_script.py KEYS_DIR [--dropout] -- <pixmix train options>``. Each rank appends one JSON line per
batch its loader hands to the training loop, ``{"epoch", "keys"}``, to ``KEYS_DIR/keys-w{world}-r{rank}.jsonl``
(flushed at once, so a rank killed mid-epoch leaves exactly the batches it trained on). ``--dropout`` trains the
smoke network behind a dropout layer, so that the run depends on torch's global RNG as well.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import pixmix.train.trainer as trainer
from pixmix.cli.train import train
from pixmix.data.loader import ShardLoader
from pixmix.models import SmokeNet


class DropoutSmoke(nn.Module):
    """SmokeNet behind dropout: each training step draws from torch's global RNG."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = SmokeNet(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(F.dropout(x, 0.3, self.training))


def record_keys(folder: Path) -> None:
    """Patch the training loader to record every batch it yields (validation loaders do not shuffle)."""
    original = ShardLoader.__iter__
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    path = folder / f"keys-w{world}-r{rank}.jsonl"

    def recording(self: ShardLoader):
        for batch in original(self):
            if self.stream.shuffle:
                with open(path, "a") as fh:
                    fh.write(json.dumps({"epoch": self.epoch, "keys": batch.keys}) + "\n")
            yield batch

    ShardLoader.__iter__ = recording  # type: ignore[method-assign]


def main(argv: list[str]) -> None:
    split = argv.index("--")
    own, options = argv[:split], argv[split + 1:]
    record_keys(Path(own[0]))
    if "--dropout" in own:
        trainer.build_model = lambda arch, n, **kw: DropoutSmoke(n)  # type: ignore[assignment]
    train.main(options, standalone_mode=True)


if __name__ == "__main__":
    main(sys.argv[1:])
