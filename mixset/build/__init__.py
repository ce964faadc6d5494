"""``mixset build``: assemble a mixing set from its collections into resumable WebDataset shards.

- :mod:`~mixset.build.config`: :class:`BuildConfig` (the options, validated once) and :class:`BuildError`;
- :mod:`~mixset.build.plan`: the items of every collection, in order (downloads and extracts remote ones);
- :mod:`~mixset.build.produce`: the items made (in worker processes) and encoded, consumed in order;
- :mod:`~mixset.build.builder`: the build itself: shards, journal entries and, last, ``manifest.json``
  and the contact sheet, through :class:`pixmix.data.shards.writer.ShardSetWriter`.
"""

from pixmix.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "BuildConfig": "config",
    "BuildError": "config",
    "SOURCES": "config",
    "BuildSummary": "builder",
    "build": "builder",
})
