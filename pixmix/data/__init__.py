"""Data: untrusted images opened safely, dataset readers in their on-disk formats, PixMix dataset
wrappers, the shard format and the streaming DDP loader.

- :mod:`~pixmix.data.images`: the one owner of image safety (format allow-list, bomb check, decode);
- :mod:`~pixmix.data.readers`: CIFAR python batches, CIFAR-C ``.npy``, class folders;
- :mod:`~pixmix.data.wrappers`: :class:`PixMixTransform`, :class:`PixMixDataset` (their shared
  :class:`PixMixOptions`), :class:`MixingFolder`;
- :mod:`~pixmix.data.shards`: tar shards, shard-set manifests, mixing sets;
- :mod:`~pixmix.data.loader`: :class:`ShardLoader` and its :class:`LoaderOptions` (epoch assignment,
  streaming, finishing batches).
"""

from pixmix.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "ImageError": "images",
    "open_image": "images",
    "check_image": "images",
    "load_rgb": "images",
    "resize_shorter": "images",
    "CIFAR": "readers",
    "CIFARCorrupted": "readers",
    "ClassFolders": "readers",
    "load_npy": "readers",
    "PixMixTransform": "wrappers",
    "PixMixDataset": "wrappers",
    "PixMixOptions": "wrappers",
    "MixingFolder": "wrappers",
    "ShardSet": "shards.shard_set",
    "MixingShards": "shards.mixing_set",
    "ShardLoader": "loader",
    "LoaderOptions": "loader",
    "ShardStream": "loader",
    "Batch": "loader",
    "StreamStats": "loader",
    "epoch_assignment": "loader",
    "finish_batch": "loader",
})
