"""Tests for pixmix.augment.transforms: explicit-generator randomness, torchvision equivalence, distributions."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T1
import torchvision.transforms.v2 as T2
import torchvision.transforms.v2.functional as F
from helpers import ks_two_sample as ks_statistic
from helpers import no_global_rng
from PIL import Image

from pixmix.augment.transforms import (
    CenterCrop,
    CropParams,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    SeededCompose,
    SeededTransform,
    to_uint8_tensor,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pixels(image) -> np.ndarray:
    """HWC uint8 array for a PIL image or a CHW tensor, for exact comparisons."""
    if isinstance(image, Image.Image):
        return np.asarray(image)
    return image.permute(1, 2, 0).numpy()


def random_rgb(height: int, width: int, seed: int = 0, low: int = 0) -> Image.Image:
    # A local numpy Generator: the fixtures themselves must not touch any global RNG.
    data = np.random.default_rng(seed).integers(low, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(data, mode="RGB")


IMAGE_300x200 = random_rgb(200, 300)  # PIL size is (W, H) = (300, 200)
IMAGE_32 = random_rgb(32, 32, seed=1, low=1)  # no zero pixels, so any zero came from padding

RANDOM_TRANSFORMS = {
    "flip": lambda: RandomHorizontalFlip(),
    "crop": lambda: RandomCrop(32, padding=4),
    "rrc": lambda: RandomResizedCrop(24),
    "compose": lambda: SeededCompose([RandomHorizontalFlip(), RandomCrop(28, padding=2), RandomResizedCrop(16)]),
}


# --- reproducibility and RNG isolation ------------------------------------------------------------


@pytest.mark.parametrize("name", RANDOM_TRANSFORMS)
def test_same_seed_gives_same_params_and_image_and_seeds_differ(name):
    t = RANDOM_TRANSFORMS[name]()
    size = tuple(F.get_size(IMAGE_32))
    for seed in range(5):
        assert t.sample(size, gen(seed)) == t.sample(size, gen(seed))
        np.testing.assert_array_equal(pixels(t(IMAGE_32, gen(seed))), pixels(t(IMAGE_32, gen(seed))))
    # A flip has only two outcomes, so look at many seeds; every transform must vary with the seed.
    distinct_params = {t.sample(size, gen(seed)) for seed in range(20)}
    distinct_images = {pixels(t(IMAGE_32, gen(seed))).tobytes() for seed in range(20)}
    assert len(distinct_params) > 1 and len(distinct_images) > 1


def test_one_generator_advances_between_calls():
    t = RandomResizedCrop(24)
    g = gen(0)
    draws = [t.sample((200, 300), g) for _ in range(5)]
    assert len(set(draws)) == 5


@pytest.mark.parametrize("name", RANDOM_TRANSFORMS)
def test_no_global_rng_is_used(name):
    t = RANDOM_TRANSFORMS[name]()
    tensor = to_uint8_tensor(IMAGE_32)
    with no_global_rng():
        for seed in range(10):
            t(IMAGE_32, gen(seed))
            t(tensor, gen(seed))
            t.sample((40, 50), gen(seed))


def test_no_global_rng_checker_detects_use():
    for use in (lambda: torch.rand(1), lambda: np.random.rand(), lambda: random.random()):
        with pytest.raises(AssertionError, match="global"), no_global_rng():
            use()


# --- apply() is exactly the v2.functional kernel --------------------------------------------------


@pytest.mark.parametrize("as_tensor", [False, True], ids=["pil", "tensor"])
def test_apply_equals_v2_functional(as_tensor):
    image = to_uint8_tensor(IMAGE_300x200) if as_tensor else IMAGE_300x200
    size = (200, 300)
    for seed in range(5):
        g = gen(seed)
        cases = []

        flip = RandomHorizontalFlip(p=1.0)
        cases.append((flip.apply(image, flip.sample(size, g)), F.horizontal_flip(image)))

        crop = RandomCrop((64, 96), padding=4)
        p = crop.sample(size, g)
        cases.append((crop.apply(image, p), F.crop(F.pad(image, [4], fill=0), p.top, p.left, p.height, p.width)))

        rrc = RandomResizedCrop((48, 40))
        p = rrc.sample(size, g)
        expected = F.resized_crop(image, p.top, p.left, p.height, p.width, size=[48, 40], antialias=True)
        cases.append((rrc.apply(image, p), expected))

        cases.append((Resize(36).apply(image, None), F.resize(image, [36], antialias=True)))
        cases.append((CenterCrop((50, 70)).apply(image, None), F.center_crop(image, [50, 70])))

        for got, want in cases:
            assert type(got) is type(want)
            np.testing.assert_array_equal(pixels(got), pixels(want))


def test_tensor_and_pil_give_same_pixels_for_geometric_transforms():
    t = SeededCompose([RandomHorizontalFlip(), RandomCrop(24, padding=4), CenterCrop(20)])
    tensor = to_uint8_tensor(IMAGE_32)
    for seed in range(10):
        out_pil, out_tensor = t(IMAGE_32, gen(seed)), t(tensor, gen(seed))
        assert out_tensor.shape == (3, 20, 20) and out_tensor.dtype == torch.uint8
        np.testing.assert_array_equal(pixels(out_pil), pixels(out_tensor))


@pytest.mark.parametrize("hw", [(50, 80), (80, 50), (33, 77), (100, 100), (37, 36), (7, 1000)])
def test_resize_output_size_matches_actual_resize(hw):
    r = Resize(36)
    image = Image.new("RGB", (hw[1], hw[0]))
    out = r(image, gen(0))
    assert tuple(F.get_size(out)) == r.output_size(hw, None)
    assert min(F.get_size(out)) == 36 or min(hw) == 36


def test_resize_truncates_longer_side_like_torchvision():
    # 36 * 80 / 50 = 57.6 -> 57, not 58.
    assert Resize(36).output_size((50, 80), None) == (36, 57)
    assert Resize(36).output_size((80, 50), None) == (57, 36)


# --- bit-for-bit agreement with torchvision given the same seed ----------------------------------


def test_random_transforms_match_torchvision_streams_with_same_seed():
    crop, flip, rrc = RandomCrop(32, padding=4), RandomHorizontalFlip(), RandomResizedCrop(24)
    with torch.random.fork_rng(devices=[]):
        for seed in range(50):
            torch.manual_seed(seed)
            want = T1.RandomResizedCrop.get_params(IMAGE_300x200, [0.08, 1.0], [3 / 4, 4 / 3])
            got = rrc.sample((200, 300), gen(seed))
            assert (got.top, got.left, got.height, got.width) == want

            torch.manual_seed(seed)
            want_crop = T2.RandomCrop(32, padding=4)(IMAGE_32)
            np.testing.assert_array_equal(pixels(crop(IMAGE_32, gen(seed))), pixels(want_crop))

            torch.manual_seed(seed)
            want_flip = T2.RandomHorizontalFlip()(IMAGE_32)
            np.testing.assert_array_equal(pixels(flip(IMAGE_32, gen(seed))), pixels(want_flip))


# --- RandomCrop -----------------------------------------------------------------------------------


def test_random_crop_offsets_are_uniform_over_0_to_8():
    crop = RandomCrop(32, padding=4)
    g = gen(1234)
    n = 4500
    params = [crop.sample((32, 32), g) for _ in range(n)]
    assert all(p.height == 32 and p.width == 32 for p in params)
    for offsets in ([p.top for p in params], [p.left for p in params]):
        assert min(offsets) == 0 and max(offsets) == 8
        counts = np.bincount(offsets, minlength=9)
        expected = n / 9
        # Every one of the 9 offsets must be well represented: a 0..7 or 1..8 range leaves a bin empty.
        assert counts.min() > 0.8 * expected
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 26.12  # chi-square, 8 degrees of freedom, p = 0.001
    # Top and left are drawn independently: the 81 joint cells are uniform too.
    joint = np.bincount([p.top * 9 + p.left for p in params], minlength=81)
    expected = n / 81
    assert float(((joint - expected) ** 2 / expected).sum()) < 124.84  # 80 dof, p = 0.001


def test_random_crop_pads_with_zeros_and_cuts_the_sampled_window():
    crop = RandomCrop(32, padding=4)
    src = pixels(IMAGE_32)
    top_left = pixels(crop.apply(IMAGE_32, CropParams(0, 0, 32, 32)))
    assert (top_left[:4] == 0).all() and (top_left[:, :4] == 0).all()
    np.testing.assert_array_equal(top_left[4:, 4:], src[:28, :28])
    assert (top_left[4:, 4:] != 0).all()  # only the padding is zero

    bottom_right = pixels(crop.apply(IMAGE_32, CropParams(8, 8, 32, 32)))
    assert (bottom_right[-4:] == 0).all() and (bottom_right[:, -4:] == 0).all()
    np.testing.assert_array_equal(bottom_right[:28, :28], src[4:, 4:])

    padded = np.pad(src, ((4, 4), (4, 4), (0, 0)))
    for seed in range(20):
        p = crop.sample((32, 32), gen(seed))
        window = padded[p.top : p.top + 32, p.left : p.left + 32]
        np.testing.assert_array_equal(pixels(crop(IMAGE_32, gen(seed))), window)


def test_random_crop_fill_value():
    out = pixels(RandomCrop(32, padding=4, fill=7).apply(IMAGE_32, CropParams(0, 0, 32, 32)))
    assert (out[:4] == 7).all() and (out[:, :4] == 7).all()


def test_random_crop_without_slack_draws_nothing():
    # Same-size crop with no padding: nothing to choose, and the generator is left untouched.
    g = gen(0)
    state = g.get_state()
    assert RandomCrop(32).sample((32, 32), g) == CropParams(0, 0, 32, 32)
    assert torch.equal(g.get_state(), state)


def test_random_crop_larger_than_padded_input_raises():
    with pytest.raises(ValueError, match=r"RandomCrop: size \(40, 40\).*\(38, 38\)"):
        RandomCrop(40, padding=3).sample((32, 32), gen(0))
    with pytest.raises(ValueError, match="size"):
        RandomCrop(33)(IMAGE_32, gen(0))


# --- RandomResizedCrop ----------------------------------------------------------------------------


def test_random_resized_crop_distribution_matches_torchvision():
    n, (height, width) = 4000, (200, 300)
    rrc = RandomResizedCrop(32)
    g = gen(7)
    ours = [rrc.sample((height, width), g) for _ in range(n)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(99)  # a different stream: compare distributions, not identical draws
        ref = [T1.RandomResizedCrop.get_params(IMAGE_300x200, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]

    for p in ours:
        assert 0 <= p.top and p.top + p.height <= height and 0 <= p.left and p.left + p.width <= width

    area_ours = np.array([p.height * p.width for p in ours]) / (height * width)
    area_ref = np.array([h * w for _, _, h, w in ref]) / (height * width)
    log_ratio_ours = np.log([p.width / p.height for p in ours])
    log_ratio_ref = np.log([w / h for _, _, h, w in ref])

    # KS critical value for n = m = 4000 at alpha = 0.001 is 1.95 * sqrt(2 / 4000) = 0.0436.
    assert ks_statistic(area_ours, area_ref) < 0.0436
    assert ks_statistic(log_ratio_ours, log_ratio_ref) < 0.0436
    # Same position distribution too (normalised crop centre).
    cx_ours = np.array([(p.left + p.width / 2) / width for p in ours])
    cx_ref = np.array([(j + w / 2) / width for _, j, _, w in ref])
    assert ks_statistic(cx_ours, cx_ref) < 0.0436

    for ours_q, ref_q in (
        (np.quantile(area_ours, [0.1, 0.5, 0.9]), np.quantile(area_ref, [0.1, 0.5, 0.9])),
        (np.quantile(log_ratio_ours, [0.1, 0.5, 0.9]), np.quantile(log_ratio_ref, [0.1, 0.5, 0.9])),
    ):
        np.testing.assert_allclose(ours_q, ref_q, atol=0.03)
    # Not ~0: on a wide image, wide crops fit more often, so rejection skews the ratio (~0.03).
    assert abs(log_ratio_ours.mean() - log_ratio_ref.mean()) < 0.01
    assert abs(area_ours.mean() - area_ref.mean()) < 0.02


def test_ks_statistic_detects_a_linear_instead_of_log_uniform_ratio():
    # Power check for the threshold above: uniform-in-ratio vs log-uniform differ by ~0.07.
    rng = np.random.default_rng(0)
    lo, hi = 3 / 4, 4 / 3
    log_uniform = np.exp(rng.uniform(math.log(lo), math.log(hi), 4000))
    linear = rng.uniform(lo, hi, 4000)
    assert ks_statistic(log_uniform, linear) > 0.0436
    assert ks_statistic(log_uniform, np.exp(rng.uniform(math.log(lo), math.log(hi), 4000))) < 0.0436


@pytest.mark.parametrize(
    "hw, expected",
    [
        ((200, 300), CropParams(0, 16, 200, 267)),  # too wide: height kept, width = round(200 * 4/3)
        ((300, 200), CropParams(16, 0, 267, 200)),  # too tall: width kept, height = round(200 / (3/4))
        ((200, 220), CropParams(0, 0, 200, 220)),  # ratio already in range: whole image
    ],
)
def test_random_resized_crop_central_fallback(hw, expected):
    # scale > 1 can never fit, so all 10 tries fail and the central crop is used.
    rrc = RandomResizedCrop(16, scale=(1.5, 2.0))
    assert rrc.sample(hw, gen(0)) == expected
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        want = T1.RandomResizedCrop.get_params(torch.zeros(3, *hw), [1.5, 2.0], [3 / 4, 4 / 3])
    assert (expected.top, expected.left, expected.height, expected.width) == want


def test_random_resized_crop_output_size():
    rrc = RandomResizedCrop((20, 30))
    out = rrc(IMAGE_300x200, gen(0))
    assert out.size == (30, 20)
    assert rrc.output_size((200, 300), rrc.sample((200, 300), gen(0))) == (20, 30)


# --- RandomHorizontalFlip -------------------------------------------------------------------------


def test_horizontal_flip_frequency_and_pixels():
    flip = RandomHorizontalFlip()
    g = gen(3)
    n = 4000
    flips = np.array([flip.sample((32, 32), g) for _ in range(n)])
    assert abs(flips.mean() - 0.5) < 4 * math.sqrt(0.25 / n)  # 4 sigma

    assert not any(RandomHorizontalFlip(p=0.0).sample((1, 1), gen(s)) for s in range(50))
    assert all(RandomHorizontalFlip(p=1.0).sample((1, 1), gen(s)) for s in range(50))

    flipped = flip.apply(IMAGE_300x200, True)
    np.testing.assert_array_equal(pixels(flipped), pixels(IMAGE_300x200.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    np.testing.assert_array_equal(pixels(flipped), pixels(IMAGE_300x200)[:, ::-1])
    assert flip.apply(IMAGE_300x200, False) is IMAGE_300x200


# --- SeededCompose --------------------------------------------------------------------------------


def test_compose_output_size_chains_through_children():
    image = random_rgb(50, 80)
    t = SeededCompose([Resize(36), RandomCrop(32)])
    params = t.sample((50, 80), gen(0))
    assert params[0] is None and isinstance(params[1], CropParams)
    assert t.output_size((50, 80), params) == (32, 32)
    assert t(image, gen(0)).size == (32, 32)

    # The crop must see Resize's 36x57 output: top in 0..4, left in 0..25.
    crops = [t.sample((50, 80), gen(seed))[1] for seed in range(300)]
    assert max(c.top for c in crops) == 4 and max(c.left for c in crops) == 25
    assert min(c.top for c in crops) == 0 and min(c.left for c in crops) == 0

    nested = SeededCompose([t, CenterCrop(20), Resize(10)])
    assert nested.output_size((50, 80), nested.sample((50, 80), gen(0))) == (10, 10)


def test_compose_equals_children_applied_one_by_one():
    flip, crop = RandomHorizontalFlip(), RandomCrop(24, padding=2)
    t = SeededCompose([flip, crop])
    size = (32, 32)
    for seed in range(20):
        params = t.sample(size, gen(seed))
        # Children sample in order from the same generator.
        g = gen(seed)
        p_flip = flip.sample(size, g)
        p_crop = crop.sample(flip.output_size(size, p_flip), g)
        assert params == (p_flip, p_crop)

        one_by_one = crop.apply(flip.apply(IMAGE_32, params[0]), params[1])
        np.testing.assert_array_equal(pixels(t.apply(IMAGE_32, params)), pixels(one_by_one))
        np.testing.assert_array_equal(pixels(t(IMAGE_32, gen(seed))), pixels(one_by_one))


def test_empty_compose_is_identity():
    t = SeededCompose([])
    assert t.sample((5, 5), gen(0)) == ()
    assert t(IMAGE_32, gen(0)) is IMAGE_32


# --- to_uint8_tensor ------------------------------------------------------------------------------


def test_to_uint8_tensor():
    x = to_uint8_tensor(IMAGE_300x200)
    assert x.dtype == torch.uint8 and x.shape == (3, 200, 300)
    assert tuple(x[:, 10, 250].tolist()) == IMAGE_300x200.getpixel((250, 10))
    with pytest.raises(ValueError, match="mode must be 'RGB', got 'L'"):
        to_uint8_tensor(IMAGE_32.convert("L"))
    with pytest.raises(ValueError, match="image must be a PIL image, got Tensor"):
        to_uint8_tensor(x)


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: RandomCrop(-3), "RandomCrop: size must be positive, got -3"),
        (lambda: RandomCrop((32, 0)), r"RandomCrop: size must be positive, got \(32, 0\)"),
        (lambda: RandomCrop((32,)), r"RandomCrop: size must be .*got \(32,\)"),
        (lambda: RandomCrop(32.0), "RandomCrop: size .*got 32.0"),
        (lambda: RandomCrop(True), "RandomCrop: size .*got True"),
        (lambda: RandomCrop(32, padding=-1), "RandomCrop: padding .*got -1"),
        (lambda: RandomCrop(32, fill=0.5), "RandomCrop: fill .*got 0.5"),
        (lambda: RandomHorizontalFlip(p=1.5), "RandomHorizontalFlip: p .*got 1.5"),
        (lambda: RandomResizedCrop(0), "RandomResizedCrop: size must be positive, got 0"),
        (lambda: RandomResizedCrop(8, scale=(0.5, 0.1)), r"RandomResizedCrop: scale .*\(0.5, 0.1\)"),
        (lambda: RandomResizedCrop(8, ratio=(0, 1)), r"RandomResizedCrop: ratio .*\(0, 1\)"),
        (lambda: RandomResizedCrop(8, ratio=0.5), "RandomResizedCrop: ratio .*got 0.5"),
        (lambda: RandomResizedCrop(8, interpolation="bilinear"), "RandomResizedCrop: interpolation .*'bilinear'"),
        (lambda: Resize(0), "Resize: size must be positive, got 0"),
        (lambda: Resize((32, 32)), r"Resize: size must be an int .*\(32, 32\)"),
        (lambda: CenterCrop(-1), "CenterCrop: size must be positive, got -1"),
        (lambda: SeededCompose([RandomHorizontalFlip(), "flip"]), r"SeededCompose: transforms\[1\] .*'flip'"),
        (lambda: SeededCompose(RandomHorizontalFlip()), "SeededCompose: transforms must be a sequence"),
        (lambda: RandomCrop(8)(IMAGE_32, 0), "RandomCrop: generator must be a torch.Generator, got int"),
        (lambda: RandomHorizontalFlip().sample((8, 8), None), "RandomHorizontalFlip: generator .*NoneType"),
        (lambda: SeededCompose([Resize(8)]).apply(IMAGE_32, ()), "SeededCompose: params must be a tuple of 1"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_parameter(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_all_transforms_are_seeded_transforms():
    for t in (RandomHorizontalFlip(), RandomCrop(4), RandomResizedCrop(4), Resize(4), CenterCrop(4), SeededCompose([])):
        assert isinstance(t, SeededTransform)
        assert "(" in repr(t)
