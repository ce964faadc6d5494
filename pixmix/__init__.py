"""pixmix: the PixMix augmentation, its data formats, training and the paper's safety metrics.

Heavy dependencies (torch, torchvision) load on first use of an attribute, so ``pixmix --help`` and
``import pixmix`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PixMix": "pixmix.augment",
    "pixmix_batch": "pixmix.augment",
    "apply_batch": "pixmix.augment",
    "PixMixConfig": "pixmix.config",
    "PixMixParams": "pixmix.params",
    "sample_params": "pixmix.params",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pixmix' has no attribute {name!r}")
