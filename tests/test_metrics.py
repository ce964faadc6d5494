"""Known-answer tests for pixmix.evaluate.metrics on small hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from pixmix.evaluate.metrics import (
    ALEXNET_ERRORS,
    CORRUPTIONS,
    anomaly_metrics,
    corruption_errors,
    flip_rate,
    mce,
    rms_calibration_error,
    top1_error,
)


def test_top1_error() -> None:
    assert top1_error(np.array([[1, 2], [3, 0], [0, 5]]), np.array([1, 1, 1])) == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="logits must be"):
        top1_error(np.zeros((0, 3)), np.zeros(0))


def test_rms_calibration_error_known_answers_and_the_reference_last_bin_bug() -> None:
    conf = np.array([0.6] * 100 + [0.9] * 100)
    correct = np.array([1] * 50 + [0] * 50 + [1] * 60 + [0] * 40)
    # bins: (conf 0.6, acc 0.5) and (conf 0.9, acc 0.6): sqrt(0.5 * 0.1^2 + 0.5 * 0.3^2)
    assert rms_calibration_error(conf, correct) == pytest.approx(100 * np.sqrt(0.05))
    # The reference drops the most confident bin: only the first one counts.
    assert rms_calibration_error(conf, correct, drop_last_bin=True) == pytest.approx(100 * np.sqrt(0.005))
    # Perfectly confident and right (single-class bins): zero.
    assert rms_calibration_error(np.ones(300), np.ones(300)) == 0.0
    # Fewer samples than a bin: one bin. Ties in confidence are fine.
    assert rms_calibration_error(np.full(10, 0.8), np.array([1] * 5 + [0] * 5)) == pytest.approx(30.0)
    # The remainder joins the last bin: 250 samples -> bins of 100 and 150.
    conf = np.concatenate([np.full(100, 0.5), np.full(150, 1.0)])
    correct = np.concatenate([np.full(100, 0.5), np.full(150, 0.0)])
    assert rms_calibration_error(conf, correct) == pytest.approx(100 * np.sqrt(150 / 250))
    with pytest.raises(ValueError, match="confidences and correct"):
        rms_calibration_error(np.ones(3), np.ones(4))


def test_flip_rate_temporal_and_noise() -> None:
    predictions = np.array([[1, 1, 2, 2], [3, 3, 3, 3]])
    assert flip_rate(predictions, noise=False) == pytest.approx(100 / 6)  # one flip of six consecutive pairs
    assert flip_rate(predictions, noise=True) == pytest.approx(200 / 6)  # frames 2, 3 differ from frame 0
    with pytest.raises(ValueError, match="T >= 2"):
        flip_rate(np.array([[1], [2]]), noise=False)


def test_corruption_errors_and_mce() -> None:
    errors = {"a": [0.1, 0.2, 0.3, 0.4, 0.5], "b": [0.0, 0.0, 0.0, 0.0, 0.5]}
    assert corruption_errors(errors) == pytest.approx({"a": 30.0, "b": 10.0})
    assert mce(errors) == pytest.approx(20.0)  # CIFAR: plain mean over corruptions x severities
    assert len(CORRUPTIONS) == len(ALEXNET_ERRORS) == 15
    as_alexnet = {c: [ALEXNET_ERRORS[c]] * 5 for c in CORRUPTIONS}
    assert mce(as_alexnet, ALEXNET_ERRORS) == pytest.approx(100.0)
    half = {c: [ALEXNET_ERRORS[c] / 2] * 5 for c in CORRUPTIONS}
    assert mce(half, ALEXNET_ERRORS) == pytest.approx(50.0)
    # Normalised per corruption: a model twice as bad on one corruption only.
    one_bad = dict(as_alexnet, fog=[min(1.0, 2 * ALEXNET_ERRORS["fog"])] * 5)
    expected = (14 * 1.0 + min(1.0, 2 * ALEXNET_ERRORS["fog"]) / ALEXNET_ERRORS["fog"]) / 15 * 100
    assert mce(one_bad, ALEXNET_ERRORS) == pytest.approx(expected)
    with pytest.raises(ValueError, match="error rates in"):
        corruption_errors({"a": [1.5]})
    with pytest.raises(ValueError, match="no error for corruption"):
        mce({"mystery": [0.1]}, ALEXNET_ERRORS)


def test_anomaly_metrics_known_answers() -> None:
    perfect = anomaly_metrics([0, 1, 2], [3, 4, 5])
    assert perfect == pytest.approx({"auroc": 100.0, "aupr": 100.0, "fpr95": 0.0, "fpr95_ours": 0.0})
    worst = anomaly_metrics([3, 4, 5], [0, 1, 2])
    assert worst["auroc"] == pytest.approx(0.0) and worst["fpr95"] == pytest.approx(100.0)
    tied = anomaly_metrics([1, 1], [1, 1])
    assert tied == pytest.approx({"auroc": 50.0, "aupr": 50.0, "fpr95": 100.0, "fpr95_ours": 100.0})
    mixed = anomaly_metrics([0.1, 0.4], [0.35, 0.8])
    assert mixed["auroc"] == pytest.approx(75.0) and mixed["aupr"] == pytest.approx(100 * 5 / 6)
    assert mixed["fpr95"] == pytest.approx(50.0)  # catching both anomalies also flags 0.4
    with pytest.raises(ValueError, match="needs in- and out-of-distribution scores"):
        anomaly_metrics([0.1], [])
