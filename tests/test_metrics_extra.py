"""Known answers for the ImageNet-P top-5 distance, the -P / -C-Bar name lists and the consistency helper."""

from __future__ import annotations

import numpy as np
import pytest

from pixmix.evaluate.metrics import (
    C_BAR_CORRUPTIONS,
    P_EXTRA_PERTURBATIONS,
    P_PERTURBATIONS,
    consistency,
    flip_rate,
    is_noise_perturbation,
    t5d,
    top5_distance,
    top5_rankings,
)


def paper_top5_distance(logits_a: np.ndarray, logits_b: np.ndarray) -> int:
    """Hendrycks & Dietterich (2019), eq. for ImageNet-P, written out literally on full rankings:
    d = sum_{i=1..5} sum_{j=min(i, s(i))+1}^{max(i, s(i))} 1(1 <= j - 1 <= 5), s = tau_a^-1 tau_b,
    with ranks from rankdata(-logits, "ordinal") (ties: the earlier class ranks higher)."""
    order_a = sorted(range(len(logits_a)), key=lambda c: (-logits_a[c], c))  # rank r (1-based) -> class
    rank_b = {c: r + 1 for r, c in enumerate(sorted(range(len(logits_b)), key=lambda c: (-logits_b[c], c)))}
    total = 0
    for i in range(1, 6):
        s = rank_b[order_a[i - 1]]
        total += sum(1 for j in range(min(i, s) + 1, max(i, s) + 1) if 1 <= j - 1 <= 5)
    return total


def test_top5_rankings_break_ties_by_class_id() -> None:
    logits = np.array([[1.0, 3.0, 3.0, 0.0, 3.0, 2.0, -1.0]])
    assert top5_rankings(logits).tolist() == [[1, 2, 4, 5, 0]]
    assert top5_rankings(np.array([[0.0, 0.0, 0.0]])).tolist() == [[0, 1, 2]]  # fewer than 5 classes


def test_top5_distance_known_answers() -> None:
    a = np.array([0, 1, 2, 3, 4])
    assert top5_distance(a, a) == 0
    assert top5_distance(a, np.array([1, 0, 2, 3, 4])) == 2  # the top two swap: each moves one place
    assert top5_distance(a, np.array([5, 6, 7, 8, 9])) == 15  # disjoint: 5 + 4 + 3 + 2 + 1
    # Class 0 drops out of the top 5 (counts as rank 6: 5 places), classes 1-4 move up one each.
    assert top5_distance(a, np.array([1, 2, 3, 4, 9])) == 9
    # Only classes below the reference's top 5 changing order costs nothing.
    assert top5_distance(a, np.array([0, 1, 2, 3, 4])) == top5_distance(a, a)
    batch = top5_distance(np.stack([a, a]), np.stack([a, np.array([4, 3, 2, 1, 0])]))
    assert batch.tolist() == [0, 4 + 2 + 0 + 2 + 4]


def test_top5_distance_matches_the_papers_formula_with_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        classes = int(rng.integers(5, 12))
        # Few distinct values: plenty of ties.
        la, lb = rng.integers(0, 4, classes).astype(float), rng.integers(0, 4, classes).astype(float)
        got = top5_distance(top5_rankings(la), top5_rankings(lb))
        assert got == paper_top5_distance(la, lb)


def test_t5d_temporal_and_noise() -> None:
    a, b, c = [0, 1, 2, 3, 4], [1, 0, 2, 3, 4], [5, 6, 7, 8, 9]
    seq = np.array([[a, b, b, c]])
    # Temporal, consecutive pairs: (a,b)=2, (b,b)=0, (b,c)=15.
    assert t5d(seq, noise=False) == pytest.approx(17 / 3)
    # Noise, every frame against the first: (a,b)=2, (a,b)=2, (a,c)=15.
    assert t5d(seq, noise=True) == pytest.approx(19 / 3)
    two = np.array([[a, a], [a, c]])
    assert t5d(two, noise=False) == pytest.approx(7.5)  # mean over sequences and pairs
    with pytest.raises(ValueError, match="T >= 2"):
        t5d(np.zeros((2, 1, 5), int), noise=False)
    with pytest.raises(ValueError, match="1 <= k <= 5"):
        top5_distance(np.zeros(6, int), np.zeros(6, int))


def test_perturbation_and_c_bar_lists() -> None:
    assert len(P_PERTURBATIONS) == 10 and len(set(P_PERTURBATIONS) | set(P_EXTRA_PERTURBATIONS)) == 14
    assert [p for p in P_PERTURBATIONS if is_noise_perturbation(p)] == ["gaussian_noise", "shot_noise"]
    assert is_noise_perturbation("speckle_noise") and not is_noise_perturbation("spatter")
    assert len(C_BAR_CORRUPTIONS) == 10 and "transverse_chromatic_abberation" in C_BAR_CORRUPTIONS


def test_consistency_uses_the_noise_flag_from_the_name() -> None:
    preds = np.array([[1, 1, 2, 2]])
    tops = np.array([[[1, 0, 2, 3, 4]] * 2 + [[2, 1, 0, 3, 4]] * 2])
    out = consistency({"gaussian_noise": preds, "rotate": preds}, {"gaussian_noise": tops, "rotate": tops})
    assert out["gaussian_noise"]["flip_rate"] == pytest.approx(flip_rate(preds, noise=True)) == pytest.approx(200 / 3)
    assert out["rotate"]["flip_rate"] == pytest.approx(100 / 3)
    # [1,0,2,..] -> [2,1,0,..]: class 1 moves 1 -> 2, class 0 moves 2 -> 3, class 2 moves 3 -> 1: 1 + 1 + 2.
    assert out["rotate"]["t5d"] == pytest.approx(4 / 3) and out["gaussian_noise"]["t5d"] == pytest.approx(8 / 3)
    assert "t5d" not in consistency({"rotate": preds})["rotate"]
