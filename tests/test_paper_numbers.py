"""Paper-comparable numbers (issue 13): the reference's RMS calibration (last bin dropped) beside the
corrected one, Outlier Exposure's FPR95 beside ours, the paper's tables as data and in the reports, the
Places365 suite and the 300K Random Images ``.npy`` reader.

Each metric is checked against an independent computation: a literal loop over the reference's
algorithm, or a brute force over every threshold, and hand-worked known answers.
"""

from __future__ import annotations

import numpy as np
import pytest

from pixmix.evaluate import metrics


def reference_calib_err(confidence: np.ndarray, correct: np.ndarray, beta: int = 100) -> float:
    """The reference's ``calib_err(p='2')`` written out as a loop (bins of ``beta``, the remainder in the
    last bin, which the loop then skips), in percent."""
    idx = np.argsort(confidence, kind="stable")
    confidence, correct = confidence[idx], correct[idx].astype(float)
    bins = [[i * beta, (i + 1) * beta] for i in range(len(confidence) // beta)]
    bins[-1][1] = len(confidence)
    total = 0.0
    for lo, hi in bins[:-1]:
        total += (hi - lo) / len(confidence) * (confidence[lo:hi].mean() - correct[lo:hi].mean()) ** 2
    return float(np.sqrt(total) * 100)


def corrected_calib_err(confidence: np.ndarray, correct: np.ndarray, beta: int = 100) -> float:
    """The same loop over every bin."""
    idx = np.argsort(confidence, kind="stable")
    confidence, correct = confidence[idx], correct[idx].astype(float)
    n = len(confidence)
    starts = list(range(0, (n // beta) * beta, beta))
    total = 0.0
    for k, lo in enumerate(starts):
        hi = n if k == len(starts) - 1 else lo + beta
        total += (hi - lo) / n * (confidence[lo:hi].mean() - correct[lo:hi].mean()) ** 2
    return float(np.sqrt(total) * 100)


def test_rms_calibration_both_ways_match_the_reference_loop() -> None:
    rng = np.random.default_rng(0)
    for n in (200, 257, 1000, 1234):
        conf = rng.uniform(0.1, 1.0, n)
        correct = rng.uniform(size=n) < conf ** 2  # overconfident
        both = metrics.rms_calibration_errors(conf, correct)
        assert both["reference"] == pytest.approx(reference_calib_err(conf, correct), rel=1e-12)
        assert both["corrected"] == pytest.approx(corrected_calib_err(conf, correct), rel=1e-12)
        assert both["reference"] != pytest.approx(both["corrected"])
    # Hand-worked: bins (conf 0.6, acc 0.5) and (0.9, acc 0.6), 100 each.
    conf = np.array([0.6] * 100 + [0.9] * 100)
    correct = np.array([1] * 50 + [0] * 50 + [1] * 60 + [0] * 40)
    assert metrics.rms_calibration_errors(conf, correct) == pytest.approx(
        {"reference": 100 * np.sqrt(0.5 * 0.01), "corrected": 100 * np.sqrt(0.5 * 0.01 + 0.5 * 0.09)})


def brute_force_fpr(ins: np.ndarray, outs: np.ndarray, recall: float, closest: bool) -> float:
    """Every distinct score as a threshold (flag >= t), highest first; ``closest``: Outlier Exposure's
    rule (recall nearest ``recall`` among thresholds up to the first full recall, ties to the higher
    recall, then the lower threshold), else the first threshold whose recall reaches ``recall``. Percent."""
    points = []
    for t in sorted(set(np.concatenate([ins, outs]).tolist()), reverse=True):
        points.append((np.sum(outs >= t) / len(outs), np.sum(ins >= t) / len(ins), t))
        if points[-1][0] == 1.0:
            break
    if closest:
        return min(points, key=lambda p: (abs(p[0] - recall), -p[0], p[2]))[1] * 100
    return next(f for r, f, _ in points if r >= recall) * 100


def test_fpr95_outlier_exposure_and_ours_known_answer() -> None:
    # 13 anomalies: recall 12/13 = 0.923 is closer to 0.95 than 13/13. The 13th anomaly ties with three
    # in-distribution samples; one more scores 9.0, above it.
    outs = np.concatenate([np.linspace(10, 21, 12), [0.5]])
    ins = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5, 0.45, 9.0])
    assert metrics.fpr_at_recall(ins, outs) == pytest.approx(10.0)  # OE: recall 12/13, threshold 9.0
    assert metrics.fpr_at_recall_ours(ins, outs) == pytest.approx(40.0)  # recall 1: 9.0 and the three 0.5s
    got = metrics.anomaly_metrics(ins, outs)
    assert got["fpr95"] == pytest.approx(10.0) and got["fpr95_ours"] == pytest.approx(40.0)
    # Among thresholds of one recall, Outlier Exposure takes the lowest (the most in-distribution flagged).
    ins = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 9.0])
    assert metrics.fpr_at_recall(ins, outs) == pytest.approx(50.0)


def test_fpr95_matches_a_brute_force_over_thresholds() -> None:
    rng = np.random.default_rng(1)
    for n_in, n_out, ties in ((50, 13, False), (200, 37, True), (31, 60, True), (5, 3, False)):
        ins, outs = rng.normal(0, 1, n_in), rng.normal(1, 1, n_out)
        if ties:
            ins, outs = np.round(ins, 1), np.round(outs, 1)
        assert metrics.fpr_at_recall(ins, outs) == pytest.approx(brute_force_fpr(ins, outs, 0.95, True))
        assert metrics.fpr_at_recall_ours(ins, outs) == pytest.approx(brute_force_fpr(ins, outs, 0.95, False))
        assert metrics.fpr_at_recall(ins, outs, 0.8) == pytest.approx(brute_force_fpr(ins, outs, 0.8, True))
    assert metrics.fpr_at_recall([1.0, 1.0], [1.0, 1.0]) == pytest.approx(100.0)  # all tied: one threshold
    with pytest.raises(ValueError, match="in- and out-of-distribution"):
        metrics.fpr_at_recall([], [1.0])
