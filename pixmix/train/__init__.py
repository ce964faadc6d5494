"""Training: ``pixmix train``, the paper's recipes on shard sets (single process or DDP under torchrun).

- :mod:`~pixmix.train.trainer`: :class:`TrainConfig` presets and :func:`train`.

The networks and checkpoints are :mod:`pixmix.models` (evaluation uses them too).
"""

from pixmix.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "TrainConfig": "trainer",
    "TrainError": "trainer",
    "TrainSummary": "trainer",
    "preset_config": "trainer",
    "train": "trainer",
    "validation_error": "trainer",
})
