"""The paper's reference numbers as data (spec sections 8 and 8b): every table a report prints ours beside.

- :data:`COLUMN_INFO`: every summary key a table uses (header, short name, lower is better), and
  :data:`CORRECTED` the key of each comparable figure's corrected twin;
- :data:`TABLES`: Tables 2, 4, 5, 6, 7, 8, 9, 10 and 13 (averages) as :class:`PaperTable` (columns + rows);
- :data:`SUITE_TABLES`: the tables a suite's report shows (the first one is its summary layout);
- :data:`TABLE13_PER_SET` (Places365, per OOD set) and :data:`TABLE14` (the k x beta grid).

``COLUMNS`` / ``KEYS`` (Table 2's six columns), ``PAPER_RESULTS`` (each suite's main table) and
``PAPER_ABLATIONS`` (Tables 4 and 5) keep their earlier meaning for existing callers. They are data, not
code, so they live apart from the report writer.
"""

from __future__ import annotations

from dataclasses import dataclass

Row = dict[str, float]


@dataclass(frozen=True)
class Column:
    """How a summary key is shown: full header, short header, and whether lower is better."""

    header: str
    short: str
    lower: bool


COLUMN_INFO: dict[str, Column] = {
    "clean_error": Column("Clean Error (%)", "Clean err.", True),
    "mce": Column("Corruptions mCE (%)", "C mCE", True),
    "cbar_error": Column("C-Bar error (%)", "C-Bar", True),
    "r_error": Column("Rendition (R) error (%)", "R err.", True),
    "mfr": Column("Consistency mFR (%)", "P mFR", True),
    "mt5d": Column("Consistency mT5D", "mT5D", True),
    "pgd_error": Column("Adversaries PGD error (%)", "PGD err.", True),
    "rms_calibration_clean": Column("Calibration RMS clean (%)", "RMS clean", True),
    "rms_calibration_c": Column("Calibration RMS on C (%)", "Calib. RMS", True),
    "rms_calibration_cbar": Column("Calibration RMS on C-Bar (%)", "RMS C-Bar", True),
    "rms_calibration_r": Column("Calibration RMS on R (%)", "RMS R", True),
    "auroc": Column("Anomaly Detection AUROC (%)", "AUROC", False),
    "aupr": Column("Anomaly Detection AUPR (%)", "AUPR", False),
    "fpr95": Column("Anomaly Detection FPR95 (%)", "FPR95", True),
}
# A comparable figure (computed as the paper's was) -> its corrected twin in the summary, and what differs.
CORRECTED: dict[str, tuple[str, str]] = {
    **{f"rms_calibration_{s}": (f"rms_calibration_{s}_corrected", "every confidence bin; the reference code, and "
                                "so the paper, drops the most confident one") for s in ("clean", "c", "cbar", "r")},
    "fpr95": ("fpr95_ours", "the first threshold recalling 95% of anomalies; Outlier Exposure's code, and so the "
              "paper, takes the threshold whose recall is closest to 95%"),
    "mfr": ("mfr_raw", "not normalised by AlexNet's flip rates (ImageNet-P)"),
    "mt5d": ("mt5d_raw", "not normalised by AlexNet's top-5 distances (ImageNet-P)"),
}

# Table 2's columns: (summary key, header, lower is better). Kept for existing callers (ablation reports).
COLUMNS = tuple((key, COLUMN_INFO[key].header, COLUMN_INFO[key].lower)
                for key in ("clean_error", "mce", "mfr", "pgd_error", "rms_calibration_c", "auroc"))
KEYS = tuple(key for key, _, _ in COLUMNS)
# CIFAR-100 Table 7 (full results; Table 6 shares its columns).
CIFAR_FULL = ("clean_error", "mce", "cbar_error", "mfr", "mt5d", "pgd_error", "rms_calibration_clean",
              "rms_calibration_c", "rms_calibration_cbar", "auroc", "aupr")
# ImageNet Tables 3 / 9 / 10 (PGD is not reported for ImageNet: every method's accuracy falls to zero).
IMAGENET_FULL = ("clean_error", "mce", "cbar_error", "r_error", "mfr", "mt5d", "rms_calibration_clean",
                 "rms_calibration_c", "rms_calibration_cbar", "rms_calibration_r", "auroc", "aupr")
PLACES_FULL = ("auroc", "aupr")


@dataclass(frozen=True)
class PaperTable:
    """One of the paper's tables: its name, what it shows, its columns (summary keys) and its rows."""

    name: str
    title: str
    columns: tuple[str, ...]
    rows: dict[str, Row]
    note: str = ""


def _rows(columns: tuple[str, ...], rows: dict[str, tuple[float, ...]]) -> dict[str, Row]:
    """Rows given as value tuples in ``columns`` order (checked), keyed by method name."""
    return {name: dict(zip(columns, values, strict=True)) for name, values in rows.items()}


_T7 = _rows(CIFAR_FULL, {
    "Baseline": (21.3, 50.0, 52.0, 10.7, 2.7, 96.8, 14.6, 31.2, 30.9, 77.7, 35.4),
    "CutMix": (20.3, 51.5, 49.6, 12.0, 3.0, 97.0, 12.2, 29.3, 26.5, 74.4, 32.3),
    "AugMix": (20.6, 35.4, 41.2, 6.5, 1.9, 95.6, 12.5, 18.8, 22.5, 84.9, 53.8),
    "OE": (21.9, 50.3, 52.1, 11.3, 3.0, 97.0, 12.0, 13.8, 13.9, 90.3, 66.2),
    "PixMix": (20.3, 30.5, 36.7, 5.7, 1.6, 92.9, 7.0, 8.1, 8.9, 89.3, 70.9),
})
_T9 = _rows(IMAGENET_FULL, {
    "Baseline": (23.9, 78.2, 61.0, 63.8, 58.0, 78.4, 5.6, 12.0, 20.7, 19.7, 79.7, 48.6),
    "AugMix": (22.8, 71.0, 56.5, 61.7, 52.7, 70.9, 4.5, 9.2, 15.0, 13.2, 84.2, 61.1),
    "PixMix": (22.6, 65.8, 44.3, 60.1, 51.1, 69.1, 3.6, 6.3, 5.8, 11.0, 85.7, 64.1),
})
_T4_T5 = _rows(KEYS, {
    "Dead Leaves (Squares)": (21.3, 36.2, 6.3, 94.1, 15.8, 81.8),
    "Spectrum+Color+WMM": (20.7, 36.1, 6.6, 94.4, 15.9, 85.8),
    "StyleGAN (Oriented)": (20.4, 37.3, 7.2, 97.0, 14.9, 83.7),
    "FractalDB": (20.3, 33.9, 6.4, 98.2, 12.0, 82.5),
    "300K Random Images": (19.6, 34.5, 6.3, 94.7, 12.9, 86.2),
    "Fractals": (20.3, 32.3, 6.2, 95.5, 8.7, 88.9),
    "FVis": (21.5, 30.3, 5.4, 91.5, 9.9, 88.1),
    "Fractals + FVis": (20.3, 30.5, 5.7, 92.9, 8.1, 89.3),
    "Mix Input only": (19.9, 34.1, 6.4, 96.7, 15.5, 86.5),
    "Mix Aug only": (20.6, 31.1, 6.2, 94.2, 6.0, 89.7),
    "Iterative": (21.1, 31.4, 5.6, 90.6, 12.7, 86.7),
})
# Table 10's own rows ("ResNet only FVis": visualisations of the same architecture trained on the same data).
_T10 = _rows(IMAGENET_FULL, {
    "Fractals": (22.0, 68.2, 47.4, 60.6, 52.6, 71.1, 4.0, 7.2, 7.4, 11.7, 85.3, 62.6),
    "ResNet only FVis": (22.1, 64.3, 45.3, 60.1, 50.7, 69.1, 3.9, 7.1, 7.6, 12.2, 85.1, 63.3),
})
# Table 13: Places365 in-distribution (ResNet-18 pre-trained on Places365; OE and PixMix fine-tuned for 10
# epochs). OOD set (the evaluation's names: "places" is Places69) -> (AUROC, AUPR) of Baseline, OE, PixMix.
TABLE13_SETS = ("gaussian", "rademacher", "blobs", "textures", "svhn", "imagenet", "places")
TABLE13_METHODS = ("Baseline", "OE", "PixMix")
_T13 = {
    "gaussian": ((72.2, 93.5, 100.0), (23.5, 54.1, 100.0)),
    "rademacher": ((47.7, 90.2, 100.0), (14.6, 44.9, 100.0)),
    "blobs": ((41.9, 100.0, 100.0), (13.0, 99.4, 100.0)),
    "textures": ((66.6, 91.4, 80.3), (24.6, 75.7, 56.2)),
    "svhn": ((96.6, 100.0, 99.5), (90.5, 99.9, 98.6)),
    "imagenet": ((63.0, 86.5, 71.5), (25.1, 69.7, 47.4)),
    "places": ((61.5, 63.1, 62.3), (23.4, 24.9, 31.3)),
    "average": ((64.2, 89.2, 87.6), (30.7, 66.9, 76.2)),
}
TABLE13_PER_SET: dict[str, dict[str, Row]] = {
    method: {s: {"auroc": auroc[i], "aupr": aupr[i]} for s, (auroc, aupr) in _T13.items()}
    for i, method in enumerate(TABLE13_METHODS)
}
# Table 14 (CIFAR-100): (k, beta) -> clean error and C mCE.
TABLE14: dict[tuple[int, int], Row] = {
    (k, beta): {"clean_error": clean, "mce": mce}
    for beta, cells in ((5, ((20.2, 31.6), (20.0, 31.1), (20.1, 30.8))),
                        (4, ((19.7, 31.3), (20.3, 30.9), (20.1, 30.7))),
                        (3, ((20.3, 31.2), (20.2, 30.7), (20.3, 30.5))))
    for k, (clean, mce) in zip((2, 3, 4), cells, strict=True)
}

TABLES: dict[str, PaperTable] = {
    "table2": PaperTable("Table 2", "CIFAR-100, WRN-40-4", KEYS,
                         {m: {k: _T7[m][k] for k in KEYS} for m in ("Baseline", "AugMix", "PixMix")}),
    "table4": PaperTable("Table 4", "CIFAR-100 mixing-set ablations", KEYS,
                         {m: r for m, r in _T4_T5.items() if m not in ("Mix Input only", "Mix Aug only", "Iterative")}),
    "table5": PaperTable("Table 5", "CIFAR-100 mixing strategies", KEYS,
                         {"PixMix Original": _T4_T5["Fractals + FVis"],
                          **{m: _T4_T5[m] for m in ("Mix Input only", "Mix Aug only", "Iterative")}}),
    "table6": PaperTable("Table 6", "CIFAR-100, PixMix combined with CutMix", CIFAR_FULL,
                         {"CutMix": _T7["CutMix"], "PixMix": _T7["PixMix"],
                          **_rows(CIFAR_FULL, {"PixMix + CutMix": (19.9, 30.9, 35.5, 5.8, 1.7, 93.1, 4.4, 6.0, 5.9,
                                                                   89.5, 68.6)})}),
    "table7": PaperTable("Table 7", "CIFAR-100 full results, WRN-40-4", CIFAR_FULL, _T7),
    "table8": PaperTable("Table 8", "CIFAR-10, WRN-40-4", KEYS, _rows(KEYS, {
        "Baseline": (4.4, 26.4, 3.4, 91.3, 22.7, 91.9), "PixMix": (4.2, 9.5, 1.7, 82.1, 3.7, 97.0)})),
    "table9": PaperTable("Table 9", "ImageNet, ResNet-50 fine-tuned 90 epochs", IMAGENET_FULL, _T9,
                         note="PGD is not reported for ImageNet: every method's accuracy falls to zero at 2/255."),
    "table10": PaperTable("Table 10", "ImageNet mixing-set ablations, ResNet-50", IMAGENET_FULL,
                          {"Baseline": _T9["Baseline"],
                           **_T10, "Fractals + FVis": _T9["PixMix"]}),
    "table13": PaperTable("Table 13", "Places365 anomaly detection, ResNet-18 (averages over 7 OOD sets)",
                          PLACES_FULL, {m: TABLE13_PER_SET[m]["average"] for m in TABLE13_METHODS}),
}
# The tables each suite's report shows beside our numbers; the first is the summary's layout.
SUITE_TABLES: dict[str, tuple[str, ...]] = {
    "cifar100": ("table7", "table6"),
    "cifar10": ("table8",),
    "imagenet": ("table9", "table10"),
    "places365": ("table13",),
}

# Each suite's main table's rows (all its columns), as before keyed by suite.
PAPER_RESULTS: dict[str, dict[str, Row]] = {suite: TABLES[names[0]].rows for suite, names in SUITE_TABLES.items()}
# CIFAR-100 ablations (Table 4: mixing sets; Table 5: mixing strategies), for the ablation pipelines.
PAPER_ABLATIONS: dict[str, Row] = _T4_T5


def table14_rows() -> dict[str, Row]:
    """Table 14 as rows named ``k=K, beta=B`` (beta 5, 4, 3 as the paper lists them, then k)."""
    return {f"k={k}, beta={beta}": TABLE14[(k, beta)] for beta in (5, 4, 3) for k in (2, 3, 4)}


__all__ = ["CIFAR_FULL", "COLUMNS", "COLUMN_INFO", "CORRECTED", "IMAGENET_FULL", "KEYS", "PAPER_ABLATIONS",
           "PAPER_RESULTS", "PLACES_FULL", "SUITE_TABLES", "TABLE13_METHODS", "TABLE13_PER_SET", "TABLE13_SETS",
           "TABLE14", "TABLES", "Column", "PaperTable", "table14_rows"]
