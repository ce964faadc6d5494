"""pixmix: the PixMix augmentation, its data formats, training and the paper's safety metrics.

The package is built in floors, each importing only the floors below it:
``utils`` < ``augment`` < ``data`` < ``train`` / ``evaluate`` < ``cli`` (and, above the library, the
``mixset`` tools and the ``pipelines``). Heavy dependencies (torch, torchvision) load on first use of
an attribute, so ``pixmix --help`` and ``import pixmix`` stay fast.
"""

from __future__ import annotations

from pixmix.utils.compat import install_aliases
from pixmix.utils.lazy import lazy_exports

__version__ = "0.1.0"

_all, __getattr__, __dir__ = lazy_exports(__name__, {
    "PixMix": "augment.pixmix",
    "pixmix_batch": "augment.pixmix",
    "apply_batch": "augment.pixmix",
    "PixMixConfig": "augment.config",
    "PixMixParams": "augment.params",
    "sample_params": "augment.params",
    "PixMixTransform": "data.wrappers",
    "PixMixDataset": "data.wrappers",
    "MixingShards": "data.shards.mixing_set",
    "ShardLoader": "data.loader",
    "PixmixError": "utils.errors",
})
__all__ = ["__version__", *_all]

# Import paths of release 0.1 that users may have written: they keep working for one release and warn.
install_aliases("pixmix", {
    "pixmix.stream": "pixmix.data.loader",
    "pixmix.mixset_reader": "pixmix.data.shards.mixing_set",
    "pixmix.metrics": "pixmix.evaluate.metrics",
    "pixmix.dataset": "pixmix.data.wrappers",
    "pixmix.datasets": "pixmix.data.readers",
    "pixmix.shards": "pixmix.data.shards.tar",
    "pixmix.shardset": "pixmix.data.shards.shard_set",
    "pixmix.images": "pixmix.data.images",
    "pixmix.recipes": "pixmix.augment.recipes",
    "pixmix.transforms": "pixmix.augment.transforms",
    "pixmix.config": "pixmix.augment.config",
    "pixmix.params": "pixmix.augment.params",
    "pixmix.ops": "pixmix.augment.ops",
    "pixmix.mixing": "pixmix.augment.mixing",
    "pixmix.attacks": "pixmix.evaluate.attacks",
    "pixmix.ood": "pixmix.evaluate.ood",
    "pixmix.report": "pixmix.evaluate.report",
    "pixmix.seeding": "pixmix.utils.seeding",
})
