"""The PixMix augmentation: op definitions, sampled parameters, the Pillow and batched kernels, the
mixing operations, seeded transforms and the paper's recipes.

- :mod:`~pixmix.augment.ops`: op names, lists and magnitude rules (pure Python);
- :mod:`~pixmix.augment.config`: :class:`PixMixConfig`, validated once;
- :mod:`~pixmix.augment.params`: sampling every random choice, separately from applying it;
- :mod:`~pixmix.augment.pil_ops` / :mod:`~pixmix.augment.batched_ops`: the ops on PIL images (as the
  reference) and as batched torch kernels (CPU and CUDA), bit-identical to each other;
- :mod:`~pixmix.augment.mixing`: the additive and multiplicative mixing;
- :mod:`~pixmix.augment.pixmix`: :class:`PixMix` (per image) and :func:`pixmix_batch` (batched);
- :mod:`~pixmix.augment.transforms`: transforms whose randomness comes from an explicit generator;
- :mod:`~pixmix.augment.recipes`: the CIFAR and ImageNet recipes around PixMix.
"""

from pixmix.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "PixMix": "pixmix",
    "pixmix_batch": "pixmix",
    "apply_batch": "pixmix",
    "pil_to_float": "pixmix",
    "PixMixConfig": "config",
    "make_config": "config",
    "PixMixParams": "params",
    "sample_params": "params",
    "fresh_generator": "params",
    "Recipe": "recipes",
    "CIFAR": "recipes",
    "IMAGENET": "recipes",
    "get_recipe": "recipes",
    "SeededTransform": "transforms",
    "SeededCompose": "transforms",
    "RandomHorizontalFlip": "transforms",
    "RandomCrop": "transforms",
    "RandomResizedCrop": "transforms",
    "Resize": "transforms",
    "CenterCrop": "transforms",
})
