"""The paper's safety evaluation: metrics, the PGD attack, anomaly sets, the suites and the reports.

- :mod:`~pixmix.evaluate.metrics`: error, mCE, flip rate, mT5D, RMS calibration, AUROC/AUPR/FPR95;
- :mod:`~pixmix.evaluate.attacks`: L-inf PGD;
- :mod:`~pixmix.evaluate.ood`: synthetic and folder out-of-distribution sets;
- :mod:`~pixmix.evaluate.suites`: :func:`evaluate`, one checkpoint on a suite (CIFAR-10/100, ImageNet);
- :mod:`~pixmix.evaluate.report`: ``results.json``/``.md``/``.png`` with the paper's rows beside ours.
"""

from pixmix.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "evaluate": "suites",
    "Suite": "suites",
    "SUITES": "suites",
    "pgd_linf": "attacks",
    "write_report": "report",
    "load_results": "report",
    "compare": "report",
})
