"""mixset: assemble PixMix mixing sets and pre-generate PixMix training data, on top of ``pixmix``.

- :mod:`mixset.sources`: every generator, feature visualisations, remote collections;
- :mod:`mixset.build`: ``mixset build`` (mixing sets as shards);
- :mod:`mixset.shard`: ``mixset shard`` (datasets and pre-generated PixMix views as shards);
- :mod:`mixset.verify`, :mod:`mixset.contact_sheet`: checking and showing a built set;
- :mod:`mixset.cli`: the command line (the top floor, with ``mixset run`` over :mod:`pipelines`).
"""

from pixmix.utils.compat import install_aliases

__version__ = "0.1.0"

# Import paths of release 0.1: they keep working for one release and warn.
install_aliases("mixset", {
    "mixset.collections": "mixset.sources.catalog",
    "mixset.fetch": "mixset.sources.fetch",
    "mixset.archives": "mixset.sources.archives",
    "mixset.procedural": "mixset.sources.procedural",
    "mixset.fvis": "mixset.sources.fvis",
    "mixset.generators": "mixset.sources.generators",
    "mixset.gen_deadleaves": "mixset.sources.deadleaves",
    "mixset.gen_spectrum": "mixset.sources.spectrum",
    "mixset.gen_stylegan": "mixset.sources.stylegan",
    "mixset.gen_fractaldb": "mixset.sources.fractaldb",
    "mixset.shard_sources": "mixset.shard.listing",
})
