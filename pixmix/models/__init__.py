"""The networks of the paper's recipes and their checkpoints, shared by training and evaluation.

- :mod:`~pixmix.models.networks`: WRN-40-4, WRN-16-4, the smoke CNN and any torchvision (or timm) classification
  model, built by name;
- :mod:`~pixmix.models.checkpoints`: weights-only checkpoints, written atomically.
"""

from pixmix.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "ARCHS": "networks",
    "SmokeNet": "networks",
    "WideResNet": "networks",
    "arch_choices": "networks",
    "arch_source": "networks",
    "classifier_prefix": "networks",
    "torchvision_archs": "networks",
    "build_model": "networks",
    "count_parameters": "networks",
    "CHECKPOINT_FORMAT": "checkpoints",
    "CHECKPOINT_VERSION": "checkpoints",
    "load_checkpoint": "checkpoints",
    "load_pretrained": "checkpoints",
    "load_state": "checkpoints",
    "pretrained_state": "checkpoints",
    "model_from_checkpoint": "checkpoints",
    "save_checkpoint": "checkpoints",
})
