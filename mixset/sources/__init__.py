"""Where mixing pictures come from: every generator, feature visualisations and remote collections.

- :mod:`~mixset.sources.catalog`: collections declared in ``manifests/*.toml``;
- :mod:`~mixset.sources.fetch` / :mod:`~mixset.sources.archives`: safe downloads and safe extraction;
- :mod:`~mixset.sources.procedural`: the project's colourful fractals (IFS and Julia sets);
- :mod:`~mixset.sources.fvis`: feature visualisations of early CNN units, many per batch (Lucent);
- :mod:`~mixset.sources.generators`: the ablation generators by name: :mod:`~mixset.sources.deadleaves`,
  :mod:`~mixset.sources.spectrum`, :mod:`~mixset.sources.stylegan`, :mod:`~mixset.sources.fractaldb`.
"""

from pixmix.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "Collection": "catalog",
    "load_collections": "catalog",
    "download": "fetch",
    "FetchError": "fetch",
    "safe_extract": "archives",
    "ArchiveError": "archives",
    "generate_fractal": "procedural",
    "fvis_images": "fvis",
    "generate": "generators",
})
