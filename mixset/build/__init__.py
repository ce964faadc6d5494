"""``mixset build``: assemble a mixing set from its collections into resumable WebDataset shards.

:mod:`~mixset.build.builder` plans the items of every collection, produces them (in worker processes)
and writes shards, journal entries and, last, ``manifest.json`` and the contact sheet.
"""

from pixmix.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "BuildConfig": "builder",
    "BuildError": "builder",
    "BuildSummary": "builder",
    "build": "builder",
    "SOURCES": "builder",
})
