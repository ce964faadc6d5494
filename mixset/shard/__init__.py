"""``mixset shard``: a dataset, or pre-generated PixMix views of it, as WebDataset shards.

- :mod:`~mixset.shard.config`: :class:`ShardConfig` (the options, validated once) and the rank/world defaults;
- :mod:`~mixset.shard.errors`: :class:`ShardError`, the one user-facing error;
- :mod:`~mixset.shard.listing`: the datasets it reads, listed as compact picklable items;
- :mod:`~mixset.shard.plan`: which items each shard holds (a pure function of the seed);
- :mod:`~mixset.shard.maker`: the samples of a shard (plain images or PixMix views);
- :mod:`~mixset.shard.sharder`: this rank's shards through
  :class:`pixmix.data.shards.writer.ShardSetWriter`, and the manifest, for any number of workers and ranks.
"""

from pixmix.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "ShardConfig": "config",
    "ShardError": "errors",
    "ShardSummary": "sharder",
    "shard": "sharder",
    "merge": "sharder",
    "DATASETS": "listing",
    "open_source": "listing",
})
