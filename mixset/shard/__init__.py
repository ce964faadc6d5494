"""``mixset shard``: a dataset, or pre-generated PixMix views of it, as WebDataset shards.

- :mod:`~mixset.shard.listing`: the datasets it reads, listed as compact picklable items;
- :mod:`~mixset.shard.sharder`: the plan (a pure function of the seed), the producers, the writer and
  the manifest, for any number of workers and ranks.
"""

from pixmix.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "ShardConfig": "sharder",
    "ShardError": "sharder",
    "ShardSummary": "sharder",
    "shard": "sharder",
    "merge": "sharder",
    "DATASETS": "listing",
    "open_source": "listing",
})
