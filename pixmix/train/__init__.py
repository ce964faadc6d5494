"""Training: ``pixmix train``, the paper's recipes on shard sets (single process, or DDP under torchrun or srun).

- :mod:`~pixmix.train.trainer`: :class:`TrainConfig` presets, the data plan and :func:`train`, which
  orchestrates the modules below;
- :mod:`~pixmix.train.loop`: :func:`train_one_epoch`, :func:`validate`, the per-step cosine and the seeds;
- :mod:`~pixmix.train.checkpointing`: resume (``last.pt``), the checkpoint saver and ``log.jsonl``;
- :mod:`~pixmix.train.context`: rank, world and device (:mod:`pixmix.utils.distributed`), the collectives;
- :mod:`~pixmix.train.errors`: :class:`TrainError`.

The networks and checkpoints are :mod:`pixmix.models` (evaluation uses them too).
"""

from pixmix.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "CheckpointSaver": "checkpointing",
    "EpochStats": "loop",
    "Learner": "loop",
    "Precision": "loop",
    "TrainConfig": "trainer",
    "TrainContext": "context",
    "TrainError": "errors",
    "TrainSummary": "trainer",
    "preset_config": "trainer",
    "train": "trainer",
    "train_one_epoch": "loop",
    "validate": "loop",
    "validation_error": "loop",
})
