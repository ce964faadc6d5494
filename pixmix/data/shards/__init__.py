"""The shard format, one concept in four parts: the tar shard itself (deterministic writer, verifier,
random-access reader), the manifest of a sharded dataset, a built mixing set read as pictures, and the
resumable writer of a whole set.

- :mod:`~pixmix.data.shards.tar`: ``<key>.<field>`` tar members, written byte-for-byte reproducibly;
- :mod:`~pixmix.data.shards.shard_set`: :class:`ShardSet`, the manifest ``mixset shard`` writes;
- :mod:`~pixmix.data.shards.mixing_set`: :class:`MixingShards`, a ``mixset build`` output as a
  random-access sequence of PIL images;
- :mod:`~pixmix.data.shards.writer`: :class:`ShardSetWriter`, the resumable writer of a set of shards
  (atomic shards, a journal entry per shard, the manifest last) that ``mixset build`` and ``mixset shard``
  share, and :class:`WriterOptions`, the options both take.
"""

from pixmix.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "Sample": "tar",
    "ShardInfo": "tar",
    "MemberRef": "tar",
    "write_shard": "tar",
    "iter_shard": "tar",
    "index_shard": "tar",
    "read_member": "tar",
    "file_sha256": "tar",
    "to_bytes": "tar",
    "ShardSet": "shard_set",
    "ShardRecord": "shard_set",
    "MixingShards": "mixing_set",
    "ShardSetWriter": "writer",
    "WriterOptions": "writer",
    "package_versions": "writer",
})
