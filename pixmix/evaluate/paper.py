"""The paper's reference numbers (spec section 8), in the layout of its Table 2.

Reports print them beside a run's own numbers (:mod:`pixmix.evaluate.report`) and the ablation
pipeline beside each ablation row; they are data, not code, so they live apart from the report writer.
"""

from __future__ import annotations

# The Table 2 columns: (summary key, header, lower is better).
COLUMNS = (
    ("clean_error", "Clean Error (%)", True),
    ("mce", "Corruptions mCE (%)", True),
    ("mfr", "Consistency mFR (%)", True),
    ("pgd_error", "Adversaries PGD error (%)", True),
    ("rms_calibration_c", "Calibration RMS on C (%)", True),
    ("auroc", "Anomaly Detection AUROC (%)", False),
)
KEYS = tuple(key for key, _, _ in COLUMNS)


def _row(*values: float) -> dict[str, float]:
    """One Table 2 row: the six summary numbers in column order."""
    return dict(zip(KEYS, values, strict=True))


# WRN-40-4, spec section 8: CIFAR-100 Tables 2/7, CIFAR-10 Table 8.
PAPER_RESULTS: dict[str, dict[str, dict[str, float]]] = {
    "cifar100": {
        "Baseline": _row(21.3, 50.0, 10.7, 96.8, 31.2, 77.7),
        "AugMix": _row(20.6, 35.4, 6.5, 95.6, 18.8, 84.9),
        "PixMix": _row(20.3, 30.5, 5.7, 92.9, 8.1, 89.3),
    },
    "cifar10": {
        "Baseline": _row(4.4, 26.4, 3.4, 91.3, 22.7, 91.9),
        "PixMix": _row(4.2, 9.5, 1.7, 82.1, 3.7, 97.0),
    },
}
# CIFAR-100 ablations (Table 4: mixing sets; Table 5: mixing strategies), for the ablation pipeline.
PAPER_ABLATIONS: dict[str, dict[str, float]] = {
    "Dead Leaves (Squares)": _row(21.3, 36.2, 6.3, 94.1, 15.8, 81.8),
    "Spectrum+Color+WMM": _row(20.7, 36.1, 6.6, 94.4, 15.9, 85.8),
    "StyleGAN (Oriented)": _row(20.4, 37.3, 7.2, 97.0, 14.9, 83.7),
    "FractalDB": _row(20.3, 33.9, 6.4, 98.2, 12.0, 82.5),
    "300K Random Images": _row(19.6, 34.5, 6.3, 94.7, 12.9, 86.2),
    "Fractals": _row(20.3, 32.3, 6.2, 95.5, 8.7, 88.9),
    "FVis": _row(21.5, 30.3, 5.4, 91.5, 9.9, 88.1),
    "Fractals + FVis": _row(20.3, 30.5, 5.7, 92.9, 8.1, 89.3),
    "Mix Input only": _row(19.9, 34.1, 6.4, 96.7, 15.5, 86.5),
    "Mix Aug only": _row(20.6, 31.1, 6.2, 94.2, 6.0, 89.7),
}

__all__ = ["COLUMNS", "KEYS", "PAPER_ABLATIONS", "PAPER_RESULTS"]
