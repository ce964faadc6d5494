"""The paper's safety metrics on numpy arrays (spec section 7). Results are in percent.

Error rates going in are fractions in [0, 1]; every function returns percent, as the paper reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pixmix.data.benchmarks import (  # noqa: F401 - re-exported: metrics are named by them
    C_BAR_CORRUPTIONS,
    CORRUPTIONS,
    IMAGENET_C_BAR_CORRUPTIONS,
    IMAGENET_P_EXTRA_PERTURBATIONS,
    IMAGENET_P_PERTURBATIONS,
    P_EXTRA_PERTURBATIONS,
    P_PERTURBATIONS,
)

# AlexNet's ImageNet-C error per corruption, averaged over the 5 severities (Hendrycks & Dietterich):
# the normalisers of ImageNet-C's mCE.
ALEXNET_ERRORS = dict(zip(CORRUPTIONS, (
    0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360,
    0.866816, 0.826572, 0.819324, 0.564592, 0.853204, 0.646056, 0.717840, 0.606500,
), strict=True))


def top1_error(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 error in percent of ``logits [N, C]`` against ``labels [N]``."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise ValueError(f"logits must be [N, C] and labels [N] with N > 0, got {logits.shape} and {labels.shape}")
    return float(np.mean(logits.argmax(axis=1) != labels) * 100)


def corruption_errors(errors: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Per corruption, the mean error over its severities, in percent."""
    out = {}
    for name, values in errors.items():
        rates = np.asarray(values, dtype=float)
        if rates.ndim != 1 or rates.size == 0 or np.any((rates < 0) | (rates > 1)):
            raise ValueError(f"errors[{name!r}] must be error rates in [0, 1], one per severity, got {rates}")
        out[name] = float(rates.mean() * 100)
    return out


def mce(errors: Mapping[str, Sequence[float]], baseline: Mapping[str, float] | None = None) -> float:
    """Mean corruption error in percent.

    Without ``baseline`` (CIFAR-C): the plain mean over every corruption and severity. With it
    (ImageNet-C, ``ALEXNET_ERRORS``): each corruption's summed error over severities divided by the
    baseline's, then averaged over corruptions.
    """
    per = corruption_errors(errors)
    if baseline is None:
        return float(np.mean(np.concatenate([np.asarray(v, dtype=float) for v in errors.values()])) * 100)
    missing = sorted(set(per) - set(baseline))
    if missing:
        raise ValueError(f"baseline has no error for corruption(s) {missing}")
    return float(np.mean([per[name] / 100 / baseline[name] for name in per]) * 100)


def flip_rate(predictions: np.ndarray, noise: bool) -> float:
    """Flip probability over perturbation sequences ``predictions [N, T]`` (class ids), in percent.

    Temporal perturbations (``noise=False``): P(f(x_j) != f(x_{j-1})) over consecutive frames. Noise
    perturbations: P(f(x_j) != f(x_1)), every frame against the first.
    """
    p = np.asarray(predictions)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"predictions must be [N, T] with N >= 1 and T >= 2, got {list(p.shape)}")
    flips = p[:, 1:] != (p[:, :1] if noise else p[:, :-1])
    return float(flips.mean() * 100)


def rms_calibration_error(confidences: np.ndarray, correct: np.ndarray, bin_size: int = 100,
                          drop_last_bin: bool = False) -> float:
    """RMS calibration error in percent with adaptive (equal-count) bins of ``bin_size``.

    Samples are sorted by confidence and cut into bins of ``bin_size``; the last bin takes the
    remainder. ``drop_last_bin=True`` reproduces the reference code (``calib_err`` of the PixMix /
    Outlier Exposure calibration tools), which skips the most confident bin: a bug (the error is then
    computed on fewer samples than it is normalised by), but the paper's numbers were computed with it.
    With fewer than ``2 * bin_size`` samples there is one bin, so the reference's figure is 0.
    """
    conf, corr = np.asarray(confidences, dtype=float), np.asarray(correct, dtype=float)
    if conf.ndim != 1 or conf.shape != corr.shape or conf.size == 0:
        raise ValueError(f"confidences and correct must be 1-D of one non-zero length, got {conf.shape}, {corr.shape}")
    if bin_size < 1:
        raise ValueError(f"bin_size must be >= 1, got {bin_size}")
    order = np.argsort(conf, kind="stable")
    conf, corr = conf[order], corr[order]
    n = conf.size
    edges = list(range(0, max(n // bin_size, 1) * bin_size, bin_size)) + [n]
    bins = list(zip(edges[:-1], edges[1:], strict=True))
    if drop_last_bin:
        bins = bins[:-1]
    total = sum((hi - lo) / n * (conf[lo:hi].mean() - corr[lo:hi].mean()) ** 2 for lo, hi in bins)
    return float(np.sqrt(total) * 100)


def fpr_at_recall(in_scores: np.ndarray, out_scores: np.ndarray, recall: float = 0.95) -> float:
    """Outlier Exposure's FPR at ``recall``, in percent: the share of in-distribution samples flagged at the
    threshold whose recall of the anomalies (``out_scores``, positives) is *closest* to ``recall``.

    As hendrycks/outlier-exposure's ``fpr_and_fdr_at_recall``: thresholds are the distinct scores, from the
    highest down to the first one that recalls every anomaly; on a tie in distance the higher recall wins,
    and among thresholds of one recall the lowest (the most in-distribution samples flagged).
    The paper's FPR95 figures were computed this way (:func:`fpr_at_recall_ours` is the usual
    "first threshold reaching ``recall``" definition).
    """
    ins, outs = _scores(in_scores, out_scores)
    scores = np.concatenate([ins, outs])
    positive = np.concatenate([np.zeros(ins.size, bool), np.ones(outs.size, bool)])
    order = np.argsort(scores, kind="mergesort")[::-1]  # descending; among ties the later sample first
    scores, positive = scores[order], positive[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # each distinct score's last index
    tps = np.cumsum(positive, dtype=np.float64)[last_of_run]
    fps = last_of_run + 1 - tps
    full = int(np.searchsorted(tps, tps[-1]))  # the first threshold that recalls every anomaly
    recalls, fps = tps[:full + 1][::-1] / tps[-1], fps[:full + 1][::-1]  # highest recall first
    best = int(np.argmin(np.abs(recalls - recall)))  # argmin: the first on ties (higher recall, lower threshold)
    return float(fps[best] / ins.size * 100)


def fpr_at_recall_ours(in_scores: np.ndarray, out_scores: np.ndarray, recall: float = 0.95) -> float:
    """FPR in percent at the first threshold (from the highest score down) whose recall of the anomalies
    reaches ``recall``: the usual definition, reported beside Outlier Exposure's (:func:`fpr_at_recall`)."""
    from sklearn.metrics import roc_curve

    ins, outs = _scores(in_scores, out_scores)
    labels = np.concatenate([np.zeros(ins.size), np.ones(outs.size)])
    fpr, tpr, _ = roc_curve(labels, np.concatenate([ins, outs]))
    return float(fpr[np.searchsorted(tpr, recall, side="left")] * 100)


def _scores(in_scores: np.ndarray, out_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ins, outs = np.asarray(in_scores, dtype=float).ravel(), np.asarray(out_scores, dtype=float).ravel()
    if ins.size == 0 or outs.size == 0:
        raise ValueError(f"anomaly_metrics needs in- and out-of-distribution scores, got {ins.size} and {outs.size}")
    return ins, outs


def anomaly_metrics(in_scores: np.ndarray, out_scores: np.ndarray, recall: float = 0.95) -> dict[str, float]:
    """AUROC, AUPR and FPR at ``recall`` TPR, in percent, with anomalies (``out_scores``) as positives.

    Scores: higher means more anomalous (for PixMix, the negative maximum softmax probability).
    ``fpr95`` is Outlier Exposure's definition (:func:`fpr_at_recall`, the paper's), ``fpr95_ours`` the
    first threshold reaching the recall (:func:`fpr_at_recall_ours`).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    ins, outs = _scores(in_scores, out_scores)
    labels = np.concatenate([np.zeros(ins.size), np.ones(outs.size)])
    scores = np.concatenate([ins, outs])
    return {"auroc": float(roc_auc_score(labels, scores) * 100),
            "aupr": float(average_precision_score(labels, scores) * 100),
            "fpr95": fpr_at_recall(ins, outs, recall), "fpr95_ours": fpr_at_recall_ours(ins, outs, recall)}


def rms_calibration_errors(confidences: np.ndarray, correct: np.ndarray, bin_size: int = 100) -> dict[str, float]:
    """Both RMS calibration figures, in percent: ``reference`` (the most confident bin dropped, as the
    paper's numbers were computed) and ``corrected`` (every bin)."""
    return {"reference": rms_calibration_error(confidences, correct, bin_size, drop_last_bin=True),
            "corrected": rms_calibration_error(confidences, correct, bin_size)}


def is_noise_perturbation(name: str) -> bool:
    """Noise sequences are i.i.d. draws around the clean first frame, so frames are compared with it."""
    return "noise" in name


def top5_rankings(logits: np.ndarray) -> np.ndarray:
    """The 5 top classes of each row of ``logits [..., C]``, best first, as ``int64 [..., min(5, C)]``.

    Ties go to the lower class id, like the reference's ``rankdata(-logits, method="ordinal")``.
    """
    x = np.asarray(logits)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"logits must be [..., C] with C > 0, got {list(x.shape)}")
    return np.argsort(-x, axis=-1, kind="stable")[..., :5].astype(np.int64)


def top5_distance(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """ImageNet-P's top-5 distance between two rankings given as top-5 class lists ``[..., k]``.

    With sigma(i) the rank under ``other`` of the class ranked i-th by ``reference``, the distance is
    sum_{i=1..5} |min(sigma(i), 6) - i|: how far each of the reference's top 5 moved, a class that left
    the top 5 counting as rank 6. It is 0 for the same top 5 in the same order and 15 for disjoint top 5s.
    With fewer than 5 classes (k = C) every rank is known and nothing is capped.
    """
    a, b = np.asarray(reference), np.asarray(other)
    if a.shape != b.shape or a.ndim < 1 or not 1 <= a.shape[-1] <= 5:
        raise ValueError(f"rankings must be [..., k] of one shape with 1 <= k <= 5, got {list(a.shape)}, "
                         f"{list(b.shape)}")
    k = a.shape[-1]
    same = a[..., :, None] == b[..., None, :]
    moved_to = np.where(same.any(axis=-1), same.argmax(axis=-1), 5)  # 0-based rank under `other`, capped
    return np.abs(moved_to - np.arange(k)).sum(axis=-1)


def t5d(rankings: np.ndarray, noise: bool) -> float:
    """Mean top-5 distance over perturbation sequences ``rankings [N, T, k]`` (from :func:`top5_rankings`).

    Like the flip rate: consecutive frames for temporal perturbations, every frame against the first for
    noise perturbations. A distance in [0, 15], not a percentage.
    """
    r = np.asarray(rankings)
    if r.ndim != 3 or r.shape[0] == 0 or r.shape[1] < 2:
        raise ValueError(f"rankings must be [N, T, k] with N >= 1 and T >= 2, got {list(r.shape)}")
    reference = np.broadcast_to(r[:, :1], r[:, 1:].shape) if noise else r[:, :-1]
    return float(top5_distance(reference, r[:, 1:]).mean())


def consistency(predictions: Mapping[str, np.ndarray],
                rankings: Mapping[str, np.ndarray] | None = None) -> dict[str, dict[str, float]]:
    """Per perturbation name, ``{"flip_rate": percent, "t5d": distance}`` (t5d when rankings are given).

    Whether a perturbation is a noise one is read from its name (:func:`is_noise_perturbation`).
    """
    out: dict[str, dict[str, float]] = {}
    for name, preds in predictions.items():
        noise = is_noise_perturbation(name)
        out[name] = {"flip_rate": flip_rate(preds, noise)}
        if rankings is not None:
            out[name]["t5d"] = t5d(rankings[name], noise)
    return out
