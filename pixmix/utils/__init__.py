"""The bottom floor: helpers every subsystem shares (seeds, errors, process tuning, JSON files, ranks).

Nothing here imports another floor of the project. Modules load on use, so ``pixmix.utils.runtime``
can tune the allocator before torch is imported.
"""

from pixmix.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "derive_seed": "seeding",
    "generator_for": "seeding",
    "json_safe": "jsonfiles",
    "write_json": "jsonfiles",
    "tune_cpu_allocator": "runtime",
})
