"""The paper's safety evaluation: metrics, the PGD attack, anomaly sets, the suites and the reports.

- :mod:`~pixmix.evaluate.metrics`: error, mCE, flip rate, mT5D, RMS calibration, AUROC/AUPR/FPR95;
- :mod:`~pixmix.evaluate.attacks`: L-inf PGD;
- :mod:`~pixmix.evaluate.ood`: synthetic and folder out-of-distribution sets;
- :mod:`~pixmix.evaluate.options`: the suites (CIFAR-10/100, ImageNet, Places365), PGD's settings, a run's
  options;
- :mod:`~pixmix.evaluate.inputs`: the image sources, as batches;
- :mod:`~pixmix.evaluate.net`: the checkpoint's network, batched inference and PGD predictions;
- :mod:`~pixmix.evaluate.measures`: one function per measure (clean, -C, -C-Bar, -P, PGD, calibration, anomaly);
- :mod:`~pixmix.evaluate.imagenet_sets`: ImageNet-R (its 200-class mask), -C-Bar folders, -P videos (PyAV);
- :mod:`~pixmix.evaluate.places365`: Table 13's suite (Places365 in-distribution, seven OOD sets);
- :mod:`~pixmix.evaluate.suites`: :func:`evaluate`, one checkpoint on a suite, every measure in turn;
- :mod:`~pixmix.evaluate.paper`: the paper's reference numbers (Tables 2, 4-10, 13, 14);
- :mod:`~pixmix.evaluate.report`: ``results.json``/``.md``/``.png`` with the paper's rows beside ours.
"""

from pixmix.utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "evaluate": "suites",
    "EvalOptions": "options",
    "Suite": "options",
    "SUITES": "options",
    "pgd_linf": "attacks",
    "write_report": "report",
    "load_results": "report",
    "compare": "report",
    "PAPER_RESULTS": "paper",
    "PAPER_ABLATIONS": "paper",
})
