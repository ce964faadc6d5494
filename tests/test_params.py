"""sample_params: one explicit generator, a fixed draw order, and the distributions of spec sections 1-3."""

from __future__ import annotations

import math
import random
from dataclasses import fields

import numpy as np
import pytest
import torch
from helpers import no_global_rng

from pixmix.augment import ops as O
from pixmix.augment.config import PixMixConfig
from pixmix.augment.params import PixMixParams, sample_params
from pixmix.augment.pixmix import PixMix, pixmix_batch

FIELDS = [f.name for f in fields(PixMixParams)]
N = 20_000
SIGMAS = 4.5  # every statistical bound below is ~4.5 standard deviations: not flaky, still tight


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def proportion_tol(p: float, n: int) -> float:
    return SIGMAS * math.sqrt(p * (1 - p) / n)


def ks_bound(n: int) -> float:
    """One-sample KS critical value at a ~1e-6 false-alarm rate: P(D > t) <= 2 exp(-2 n t^2)."""
    return math.sqrt(math.log(2 / 1e-6) / (2 * n))


def ks_one_sample(samples, cdf) -> float:
    """sup |ECDF - F| for a continuous CDF ``cdf`` (vectorised over a numpy array)."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = len(x)
    f = cdf(x)
    upper = np.arange(1, n + 1) / n - f
    lower = f - np.arange(0, n) / n
    return float(max(upper.max(), lower.max()))


def corr(x, y) -> float:
    return float(np.corrcoef(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))[0, 1])


def assert_params_equal(p: PixMixParams, q: PixMixParams) -> None:
    for name in FIELDS:
        a, b = getattr(p, name), getattr(q, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), name


# --- shapes, reproducibility ------------------------------------------------------------------------


def test_shapes_and_dtypes():
    p = sample_params(PixMixConfig(k=4), 7, gen(0))
    expected = {
        "op": ((7, 5), torch.int64),
        "level": ((7, 5), torch.float32),
        "negate": ((7, 5), torch.bool),
        "start_augmented": ((7,), torch.bool),
        "rounds": ((7,), torch.int64),
        "partner_augmented": ((7, 4), torch.bool),
        "multiplicative": ((7, 4), torch.bool),
        "a": ((7, 4), torch.float32),
        "b": ((7, 4), torch.float32),
    }
    assert set(expected) == set(FIELDS)
    for name, (shape, dtype) in expected.items():
        t = getattr(p, name)
        assert tuple(t.shape) == shape and t.dtype == dtype, name
    assert p.batch_size == 7 and p.k == 4
    p0 = sample_params(PixMixConfig(k=0), 5, gen(0))
    assert p0.k == 0 and tuple(p0.op.shape) == (5, 1) and tuple(p0.a.shape) == (5, 0)
    assert torch.equal(p0.rounds, torch.zeros(5, dtype=torch.int64))
    empty = sample_params(PixMixConfig(), 0, gen(0))
    assert empty.batch_size == 0 and tuple(empty.level.shape) == (0, 5)


@pytest.mark.parametrize("config", [PixMixConfig(), PixMixConfig(k=2, beta=4.0, severity=1.0, ops="basic")])
def test_same_seed_same_params_every_field(config):
    for seed in (0, 1, 12345):
        assert_params_equal(sample_params(config, 64, gen(seed)), sample_params(config, 64, gen(seed)))


def test_different_seeds_differ_in_every_random_field():
    p, q = sample_params(PixMixConfig(), 64, gen(0)), sample_params(PixMixConfig(), 64, gen(1))
    for name in FIELDS:
        assert not torch.equal(getattr(p, name), getattr(q, name)), name


def test_generator_advances_between_calls():
    g = gen(0)
    first, second = sample_params(PixMixConfig(), 16, g), sample_params(PixMixConfig(), 16, g)
    assert not torch.equal(first.level, second.level) and not torch.equal(first.a, second.a)


def test_select_slice_and_to():
    p = sample_params(PixMixConfig(), 10, gen(3))
    s = p.slice(2, 6)
    assert s.batch_size == 4 and s.k == p.k
    one = p.select(7)
    assert one.batch_size == 1
    for name in FIELDS:
        assert torch.equal(getattr(s, name), getattr(p, name)[2:6])
        assert torch.equal(getattr(one, name)[0], getattr(p, name)[7])
    assert_params_equal(p.to("cpu"), p)


# --- no global RNG ----------------------------------------------------------------------------------


def test_sample_params_uses_no_global_rng():
    with no_global_rng():
        sample_params(PixMixConfig(), 100, gen(0))
        sample_params(PixMixConfig(k=0, ops="basic"), 10, gen(1))
        sample_params(PixMixConfig(), 10)  # generator=None: a fresh, entropy-seeded generator


def test_pixmix_call_and_batch_use_no_global_rng(photos32, fractals32):
    pm = PixMix.cifar()
    with no_global_rng():
        for i in range(10):
            pm(photos32.pils[i], fractals32.pils[i], gen(i))
        pm(photos32.pils[0], fractals32.pils[0])  # generator=None
        pixmix_batch(photos32.tensor[:32], fractals32.tensor[:32], generator=gen(0))
        pixmix_batch(photos32.tensor[:8], fractals32.tensor[:8])  # generator=None


def test_no_global_rng_checker_detects_use():
    for use in (lambda: torch.rand(1), lambda: np.random.rand(), lambda: random.random()):
        with pytest.raises(AssertionError, match="global"), no_global_rng():
            use()


def test_no_generator_means_fresh_entropy():
    a = sample_params(PixMixConfig(), 32)
    b = sample_params(PixMixConfig(), 32)
    assert not torch.equal(a.level, b.level)


# --- round_active / slot_used -----------------------------------------------------------------------


def hand_params() -> PixMixParams:
    b, k = 3, 3
    return PixMixParams(
        op=torch.zeros(b, k + 1, dtype=torch.int64),
        level=torch.ones(b, k + 1),
        negate=torch.zeros(b, k + 1, dtype=torch.bool),
        start_augmented=torch.tensor([True, False, True]),
        rounds=torch.tensor([0, 2, 3]),
        partner_augmented=torch.tensor([[True, True, True], [True, False, True], [False, True, True]]),
        multiplicative=torch.zeros(b, k, dtype=torch.bool),
        a=torch.full((b, k), 0.5),
        b=torch.full((b, k), 0.5),
    )


def test_round_active_and_slot_used_by_hand():
    p = hand_params()
    assert p.round_active().tolist() == [[False, False, False], [True, True, False], [True, True, True]]
    # slot 0: the start image; slot r+1: round r's partner, needed only when the round runs
    assert p.slot_used().tolist() == [
        [True, False, False, False],
        [False, True, False, False],
        [True, False, True, True],
    ]


def test_round_active_and_slot_used_on_random_params():
    p = sample_params(PixMixConfig(k=4), 500, gen(7))
    active, used = p.round_active(), p.slot_used()
    assert active.shape == (500, 4) and used.shape == (500, 5)
    for r in range(4):
        assert torch.equal(active[:, r], p.rounds > r)
    assert torch.equal(active.sum(1), p.rounds)
    assert torch.equal(used[:, 0], p.start_augmented)
    assert torch.equal(used[:, 1:], active & p.partner_augmented)
    # Slots beyond the last round are never needed, even where partner_augmented is set.
    assert not (used[:, 1:] & ~active).any() and (p.partner_augmented & ~active).any()


# --- distributions over N = 20,000 samples ---------------------------------------------------------


@pytest.fixture(scope="module", params=[3.0, 4.0], ids=["beta3", "beta4"])
def big(request):
    beta = request.param
    config = PixMixConfig(k=4, beta=beta, severity=3.0, ops="all")
    return beta, sample_params(config, N, gen(int(beta) * 1000 + 1))


@pytest.mark.parametrize("k", [4, 2, 1])
def test_rounds_uniform_over_0_to_k(k):
    p = sample_params(PixMixConfig(k=k), N, gen(11 + k))
    counts = torch.bincount(p.rounds, minlength=k + 1).numpy() / N
    assert len(counts) == k + 1 and p.rounds.min() >= 0 and p.rounds.max() <= k
    tol = proportion_tol(1 / (k + 1), N)
    np.testing.assert_allclose(counts, 1 / (k + 1), atol=tol)


def test_rounds_zero_probability_is_one_fifth_for_k4(big):
    _, p = big
    assert abs(float((p.rounds == 0).float().mean()) - 0.2) < proportion_tol(0.2, N)  # +-0.0127


@pytest.mark.parametrize("ops", ["all", "basic", ("rotate", "solarize", "equalize")])
def test_op_uniform_over_the_op_list(ops):
    config = PixMixConfig(ops=ops)
    n_ops = len(config.op_names)
    p = sample_params(config, N, gen(5))
    ops_drawn = p.op.flatten()
    assert ops_drawn.min() == 0 and ops_drawn.max() == n_ops - 1
    freq = torch.bincount(ops_drawn, minlength=n_ops).numpy() / ops_drawn.numel()
    np.testing.assert_allclose(freq, 1 / n_ops, atol=proportion_tol(1 / n_ops, ops_drawn.numel()))


@pytest.mark.parametrize("severity", [3.0, 1.0, 10.0, 0.1])
def test_level_uniform_between_0_1_and_severity(severity):
    p = sample_params(PixMixConfig(severity=severity), N, gen(21))
    level = p.level.flatten().double().numpy()
    n = level.size  # 100,000 slots, independent
    lo, hi = O.MIN_LEVEL, severity
    width = hi - lo
    if width == 0:
        assert np.all(np.abs(level - 0.1) < 1e-7)
        return
    assert level.min() >= lo - 1e-7 and level.max() < hi
    assert level.min() < lo + 20 * width / n and level.max() > hi - 20 * width / n
    assert abs(level.mean() - (lo + hi) / 2) < SIGMAS * width / math.sqrt(12 * n)
    d = ks_one_sample(level, lambda x: np.clip((x - lo) / width, 0, 1))
    assert d < ks_bound(n), d


def test_binary_choices_are_fair_coins(big):
    _, p = big
    for name in ("negate", "start_augmented", "partner_augmented", "multiplicative"):
        t = getattr(p, name)
        freq = float(t.float().mean())
        assert abs(freq - 0.5) < proportion_tol(0.5, t.numel()), (name, freq)
    extrapolate = p.b < 0
    assert abs(float(extrapolate.float().mean()) - 0.5) < proportion_tol(0.5, extrapolate.numel())


def test_binary_choices_are_independent(big):
    _, p = big
    n = p.a.numel()
    flags = {
        "partner_augmented": p.partner_augmented.flatten(),
        "multiplicative": p.multiplicative.flatten(),
        "extrapolate": (p.b < 0).flatten(),
        "negate": p.negate[:, 1:].flatten(),
    }
    names = list(flags)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            r = corr(flags[names[i]], flags[names[j]])
            assert abs(r) < SIGMAS / math.sqrt(n), (names[i], names[j], r)
    # start_augmented against rounds (both per sample)
    assert abs(corr(p.start_augmented, p.rounds)) < SIGMAS / math.sqrt(N)


def test_interpolation_and_extrapolation_are_told_apart_by_signs(big):
    _, p = big
    a, b = p.a.flatten().double().numpy(), p.b.flatten().double().numpy()
    extrapolate = b < 0
    # Extrapolation: a = 1 + Beta(1, beta) in [1, 2), b = -Beta(1, beta) in (-1, 0].
    assert np.all(a[extrapolate] >= 1) and np.all(a[extrapolate] < 2) and np.all(b[extrapolate] > -1)
    # Interpolation: a ~ Beta(beta, 1) in (0, 1], b ~ Beta(1, beta) in [0, 1).
    inter = ~extrapolate
    assert np.all(a[inter] > 0) and np.all(a[inter] <= 1) and np.all(b[inter] >= 0) and np.all(b[inter] < 1)
    # Not normalised: a + b is 1 only on average (beta/(beta+1) + 1/(beta+1)), not sample by sample.
    total = a[inter] + b[inter]
    assert abs(total.mean() - 1.0) < 0.01 and total.std() > 0.15 and np.mean(np.abs(total - 1) > 1e-3) > 0.99


def test_interpolation_coefficients_follow_their_beta_laws(big):
    beta, p = big
    a, b = p.a.flatten().double().numpy(), p.b.flatten().double().numpy()
    inter = b >= 0
    ai, bi = a[inter], b[inter]
    n = ai.size
    d_a = ks_one_sample(ai, lambda x: np.clip(x, 0, 1) ** beta)  # Beta(beta, 1): CDF x^beta
    d_b = ks_one_sample(bi, lambda x: 1 - (1 - np.clip(x, 0, 1)) ** beta)  # Beta(1, beta)
    assert d_a < ks_bound(n), d_a
    assert d_b < ks_bound(n), d_b
    # Means: beta / (beta + 1) and 1 / (beta + 1); Beta(beta, 1) has variance beta / ((beta+1)^2 (beta+2)).
    sd_a = math.sqrt(beta / ((beta + 1) ** 2 * (beta + 2)))
    assert abs(ai.mean() - beta / (beta + 1)) < SIGMAS * sd_a / math.sqrt(n)
    assert abs(bi.mean() - 1 / (beta + 1)) < SIGMAS * sd_a / math.sqrt(n)
    # a and b are independent draws.
    assert abs(corr(ai, bi)) < SIGMAS / math.sqrt(n)


def test_extrapolation_coefficients_follow_their_beta_laws(big):
    beta, p = big
    a, b = p.a.flatten().double().numpy(), p.b.flatten().double().numpy()
    extra = b < 0
    a1, nb = a[extra] - 1, -b[extra]
    n = a1.size
    cdf = lambda x: 1 - (1 - np.clip(x, 0, 1)) ** beta  # noqa: E731  Beta(1, beta)
    d_a, d_b = ks_one_sample(a1, cdf), ks_one_sample(nb, cdf)
    assert d_a < ks_bound(n), d_a
    assert d_b < ks_bound(n), d_b
    # two independent Beta(1, beta) draws, not one reused
    assert abs(corr(a1, nb)) < SIGMAS / math.sqrt(n)
    assert not np.any(a1 == nb)


def test_ks_checks_would_catch_swapped_beta_parameters(big):
    """The KS bound is tight enough: Beta(1, beta) in place of Beta(beta, 1) fails by far."""
    beta, p = big
    ai = p.a[p.b >= 0].double().numpy()
    wrong = ks_one_sample(ai, lambda x: 1 - (1 - np.clip(x, 0, 1)) ** beta)
    off_by_one_beta = ks_one_sample(ai, lambda x: np.clip(x, 0, 1) ** (beta + 1))
    assert wrong > 10 * ks_bound(ai.size)
    assert off_by_one_beta > 2 * ks_bound(ai.size)


def test_coefficients_are_independent_across_rounds(big):
    _, p = big
    n = p.batch_size
    for r in range(p.k - 1):
        assert abs(corr(p.a[:, r], p.a[:, r + 1])) < SIGMAS / math.sqrt(n)
        assert abs(corr(p.b[:, r], p.b[:, r + 1])) < SIGMAS / math.sqrt(n)


@pytest.mark.parametrize("beta", [0.01, 100.0])
def test_extreme_beta_gives_finite_positive_a(beta):
    p = sample_params(PixMixConfig(beta=beta), 5000, gen(9))
    assert torch.isfinite(p.a).all() and torch.isfinite(p.b).all()
    assert (p.a > 0).all()  # the batched multiplicative kernel relies on a > 0
    assert (p.a <= 2).all() and (p.b >= -1).all() and (p.b <= 1).all()
    inter = p.b >= 0
    if beta == 100.0:
        # Beta(100, 1) hugs 1 and Beta(1, 100) hugs 0.
        assert float(p.a[inter].mean()) > 0.98 and float(p.b[inter].mean()) < 0.02
    else:
        assert float(p.a[inter].median()) < 1e-10 and float(p.b[inter].mean()) > 0.95
