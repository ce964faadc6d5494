"""The base operations: op lists, magnitude rules (spec section 1), and the batched torch kernels
against the per-image Pillow ops they must reproduce."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixmix.augment import batched_ops, pil_ops
from pixmix.augment import ops as O
from pixmix.augment.config import PixMixConfig
from pixmix.augment.pixmix import PixMix
from pixmix.augment.transforms import to_uint8_tensor


class ImageSet:
    """The same pictures as PIL RGB images and as one uint8 ``[n, 3, H, W]`` tensor."""

    def __init__(self, pils: list[Image.Image]) -> None:
        self.pils = list(pils)
        self.tensor = torch.stack([to_uint8_tensor(p) for p in self.pils])

    def __len__(self) -> int:
        return len(self.pils)


image_set = ImageSet


def noise_set(n: int, height: int, width: int, seed: int) -> ImageSet:
    data = np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)
    return ImageSet([Image.fromarray(a, mode="RGB") for a in data])


# Every batched op is bit-exact with Pillow (rotate and shear included: float64 with Pillow's own
# expressions; a float32 grid_sample version was one level off on 0.03% - 0.24% of pixels).
AFFINE_OPS = ("rotate", "shear_x", "shear_y")

# --- op lists ---------------------------------------------------------------------------------------


def test_basic_ops_are_the_nine_of_the_spec_in_order():
    assert O.BASIC_OPS == (
        "autocontrast",
        "equalize",
        "posterize",
        "rotate",
        "solarize",
        "shear_x",
        "shear_y",
        "translate_x",
        "translate_y",
    )


def test_all_ops_are_basic_plus_the_four_enhance_ops():
    assert O.ALL_OPS == O.BASIC_OPS + ("color", "contrast", "brightness", "sharpness")
    assert len(O.ALL_OPS) == 13 and len(set(O.ALL_OPS)) == 13
    assert O.resolve_ops("basic") == O.BASIC_OPS
    assert O.resolve_ops("all") == O.ALL_OPS
    assert O.resolve_ops(["solarize", "rotate"]) == ("solarize", "rotate")
    assert O.SIGNED_OPS == {"rotate", "shear_x", "shear_y", "translate_x", "translate_y"}
    assert O.ENHANCE_OPS == {"color", "contrast", "brightness", "sharpness"}
    assert set(pil_ops.PIL_OPS) == set(O.ALL_OPS)


def test_default_and_presets_follow_the_paper_recipes():
    # The default is the paper recipe ("all" ops), not the reference CLI default ("basic").
    assert PixMixConfig().op_names == O.ALL_OPS
    assert (PixMixConfig().k, PixMixConfig().beta, PixMixConfig().severity) == (4, 3.0, 3.0)
    cifar, imagenet = PixMix.cifar(), PixMix.imagenet()
    assert (cifar.config.k, cifar.config.beta, cifar.config.severity, cifar.image_size) == (4, 3.0, 3.0, 32)
    assert (imagenet.config.k, imagenet.config.beta, imagenet.config.severity, imagenet.image_size) == (
        4,
        4.0,
        1.0,
        224,
    )
    assert cifar.config.op_names == O.ALL_OPS and imagenet.config.op_names == O.ALL_OPS
    assert PixMixConfig(ops="basic").op_names == O.BASIC_OPS


# --- magnitude rules: int(level * max / 10) with truncation, float level * max / 10 ------------------


@pytest.mark.parametrize(
    "level, bits",
    [(0.1, 4), (1.0, 4), (2.499, 4), (2.5, 3), (3.0, 3), (4.999, 3), (5.0, 2), (7.499, 2), (7.5, 1), (9.999, 1),
     (10.0, 0)],
)
def test_posterize_bits(level, bits):
    assert O.posterize_bits(level) == bits


@pytest.mark.parametrize(
    "level, degrees",
    [(0.1, 0), (0.333, 0), (0.334, 1), (1.0, 3), (1.333, 3), (1.334, 4), (3.0, 9), (5.0, 15), (9.999, 29), (10.0, 30)],
)
def test_rotate_degrees(level, degrees):
    assert O.rotate_degrees(level) == degrees


@pytest.mark.parametrize(
    "level, threshold",
    # 256 - int(level * 25.6)
    [(0.1, 254), (0.039, 256), (0.04, 255), (1.0, 231), (3.0, 180), (5.0, 128), (9.0, 26), (9.999, 1), (10.0, 0)],
)
def test_solarize_threshold(level, threshold):
    assert O.solarize_threshold(level) == threshold


@pytest.mark.parametrize("level, factor", [(0.1, 0.003), (1.0, 0.03), (3.0, 0.09), (5.0, 0.15), (10.0, 0.3)])
def test_shear_factor(level, factor):
    assert O.shear_factor(level) == pytest.approx(factor, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    "side, level, pixels",
    [
        # S = 32: int(level * 10.667 / 10)
        (32, 0.1, 0),
        (32, 0.937, 0),
        (32, 0.938, 1),
        (32, 1.0, 1),
        (32, 1.874, 1),
        (32, 1.875, 2),  # 1.875 * 32/3 / 10 = 2 exactly
        (32, 3.0, 3),
        (32, 9.999, 10),
        (32, 10.0, 10),
        # S = 224: int(level * 74.667 / 10)
        (224, 0.1, 0),
        (224, 0.133, 0),
        (224, 0.134, 1),
        (224, 1.0, 7),
        (224, 3.0, 22),
        (224, 3.75, 28),  # exactly 28
        (224, 9.999, 74),
        (224, 10.0, 74),
    ],
)
def test_translate_pixels(side, level, pixels):
    assert O.translate_pixels(level, side) == pixels


@pytest.mark.parametrize("level, factor", [(0.1, 0.118), (1.0, 0.28), (3.0, 0.64), (5.0, 1.0), (10.0, 1.9)])
def test_enhance_factor(level, factor):
    assert O.enhance_factor(level) == pytest.approx(factor, rel=1e-12)


def test_integer_magnitudes_truncate_and_float_magnitudes_do_not():
    # The same level gives a truncated integer and an untruncated float parameter.
    assert O.int_parameter(2.9, 10) == 2 and O.float_parameter(2.9, 10) == pytest.approx(2.9)
    assert O.int_parameter(0.999, 10) == 0 and O.int_parameter(1.0, 10) == 1
    # Paper presets: at ImageNet's severity 1 every integer op is at its weakest.
    for level in np.linspace(0.1, 0.999, 50):
        assert O.posterize_bits(level) == 4
        assert O.solarize_threshold(level) >= 256 - 25
        assert 0 <= O.rotate_degrees(level) <= 2


# --- batched kernels vs Pillow, op by op ----------------------------------------------------------


def pil_reference(images: ImageSet, name: str, levels: torch.Tensor, negates: torch.Tensor) -> torch.Tensor:
    outs = [
        to_uint8_tensor(pil_ops.apply_op(image, name, float(level), bool(neg)))
        for image, level, neg in zip(images.pils, levels.tolist(), negates.tolist())
    ]
    return torch.stack(outs)


def run_both(images: ImageSet, name: str, levels, negates):
    levels = torch.as_tensor(levels, dtype=torch.float32)
    negates = torch.as_tensor(negates, dtype=torch.bool)
    got = batched_ops.apply_op(name, images.tensor, levels, negates)
    return got, pil_reference(images, name, levels, negates)


def assert_matches_pillow(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == torch.uint8 and got.shape == want.shape
    diff = (got.int() - want.int()).abs()
    bad = int((diff > 0).sum())
    assert bad == 0, f"{name}: {bad} pixels differ from Pillow (max {int(diff.max())})"


# 13 levels x both signs for 26 images of 32 px.
LEVELS_32 = [0.1, 0.2, 0.5, 0.95, 1.4, 2.0, 2.5, 3.3, 4.4, 5.0, 6.6, 8.1, 9.999]
LEVELS_32_BOTH_SIGNS = [lv for lv in LEVELS_32 for _ in (0, 1)]
NEGATE_32 = [bool(i % 2) for i in range(26)]
# 6 images of 224 px.
LEVELS_224 = [0.1, 1.3, 3.7, 5.5, 7.9, 9.999]
NEGATE_224 = [False, True, False, True, True, False]


@pytest.fixture(scope="module")
def photos32_26(photos32) -> ImageSet:
    return image_set(photos32.pils[:26])


@pytest.fixture(scope="module")
def photos224_6(photos224) -> ImageSet:
    return image_set(photos224.pils[:6])


@pytest.mark.parametrize("name", O.ALL_OPS)
@pytest.mark.parametrize("kind", ["noise", "photos"])
def test_batched_op_matches_pillow_32px(name, kind, noise32, photos32_26):
    images = noise32 if kind == "noise" else photos32_26
    got, want = run_both(images, name, LEVELS_32_BOTH_SIGNS, NEGATE_32)
    assert_matches_pillow(name, got, want)
    # The comparison is not vacuous: the op changed most images (uniform noise already spans 0..255
    # in every channel, which autocontrast leaves alone).
    changed = (got != images.tensor).flatten(1).any(1).float().mean()
    if (name, kind) != ("autocontrast", "noise"):
        assert changed >= 0.5


@pytest.mark.parametrize("name", O.ALL_OPS)
@pytest.mark.parametrize("kind", ["noise", "photos"])
def test_batched_op_matches_pillow_224px(name, kind, noise224, photos224_6):
    images = noise224 if kind == "noise" else photos224_6
    got, want = run_both(images, name, LEVELS_224, NEGATE_224)
    assert_matches_pillow(name, got, want)
    changed = (got != images.tensor).flatten(1).any(1).float().mean()
    if (name, kind) != ("autocontrast", "noise"):
        assert changed >= 0.5


@pytest.mark.parametrize("size", [32, 224])
def test_torch_rotation_kernel_is_bit_exact(size, noise32, noise224):
    """On the CPU, rotate calls Pillow; CUDA tensors use the float64 torch kernel ``affine``. Check
    that kernel here, on the CPU, against Pillow's rotate for every angle the op can draw."""
    images = noise32 if size == 32 else noise224
    degrees = torch.tensor([(-1) ** i * (1 + (i * 7) % 30) for i in range(len(images))], dtype=torch.float64)
    got = batched_ops.affine(images.tensor, batched_ops.rotation_matrix(degrees, size, size))
    want = torch.stack([
        to_uint8_tensor(im.rotate(float(d), resample=Image.Resampling.BILINEAR)) for im, d in zip(images.pils, degrees)
    ])
    assert torch.equal(got, want)


# Found at commit 96e7740: the grid_sample-based affine kernel was not the identity for a 0-degree
# rotation at 224 px (float32 grid normalisation put sample points ~1.5e-5 px off the pixel centres;
# with truncation ~14% of noise pixels came out one level darker). Pillow's rotate(0) is a copy.
def test_rotate_by_zero_degrees_is_identity_at_224px(noise224):
    # Levels below 1/3 give int(level * 3) = 0 degrees: about a quarter of all rotations at ImageNet's
    # severity 1.
    levels = [0.1, 0.15, 0.2, 0.25, 0.3, 0.333]
    assert all(O.rotate_degrees(float(np.float32(lv))) == 0 for lv in levels)
    got, want = run_both(noise224, "rotate", levels, NEGATE_224)
    assert torch.equal(want, noise224.tensor)  # Pillow: an exact copy
    assert torch.equal(got, noise224.tensor)


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_rotate_by_zero_degrees_is_identity_at_power_of_two_sizes(size):
    images = noise_set(3, size, size, seed=size)
    got = batched_ops.apply_op("rotate", images.tensor, torch.tensor([0.1, 0.2, 0.3]),
                               torch.tensor([False, True, False]))
    assert torch.equal(got, images.tensor)


# Pillow's ImageEnhance blends with Image.blend, which computes ``in1 + float(alpha * (in2 - in1))``:
# the float32 product is rounded before the add. A fused multiply-add (torch.addcmul, as at commit
# 96e7740) skips that rounding, so when the product rounds to a whole number the truncated result came
# out one level lower. These cases are the minimal reproductions found then.
def test_contrast_blend_rounds_like_pillow():
    image = Image.fromarray(np.array([[[32, 32, 32], [190, 190, 190]]], dtype=np.uint8))
    level = 1.9760903120040894  # a float32 value the sampler drew; factor 0.45569625 (float32)
    want = np.asarray(pil_ops.apply_op(image, "contrast", level, False))
    # Degenerate = mean luminance 111; 111 + 0.45569625 * (32 - 111) = 111 - 36.0 (rounded) = 75.
    assert want[0, :, 0].tolist() == [75, 147]
    got = batched_ops.apply_op("contrast", to_uint8_tensor(image)[None], torch.tensor([level]), torch.tensor([False]))
    assert got[0, 0, 0].tolist() == [75, 147]


def test_color_blend_rounds_like_pillow():
    image = Image.fromarray(np.array([[[94, 103, 6]]], dtype=np.uint8))
    level = 5.793649196624756  # factor 1.1428568 (> 1: extrapolation, clipped)
    want = np.asarray(pil_ops.apply_op(image, "color", level, False))
    # Luminance 89; 89 + 1.1428568 * (103 - 89) = 89 + 16.0 (rounded) = 105.
    assert want.ravel().tolist() == [94, 105, 0]
    got = batched_ops.apply_op("color", to_uint8_tensor(image)[None], torch.tensor([level]), torch.tensor([False]))
    assert got.ravel().tolist() == [94, 105, 0]


# At level 5.5 the factor float32(1.09) = 1.0900000334 makes products with a negative difference land
# just past a whole number, which Pillow rounds onto it: the fused version was one level low on 1063
# (color), 3572 (contrast) and 232 (sharpness) of these 903,168 values.
@pytest.mark.parametrize("name", ["color", "contrast", "sharpness"])
def test_blend_at_round_factor_matches_pillow(name, noise224):
    levels = [5.5] * len(noise224)
    got, want = run_both(noise224, name, levels, [False] * len(noise224))
    assert int((got.int() - want.int()).abs().max()) <= 1
    assert torch.equal(got, want)


def test_brightness_at_round_factor_matches_pillow(noise224):
    # brightness is a plain product (no add), so it has no such rounding difference
    levels = [5.5] * len(noise224)
    got, want = run_both(noise224, "brightness", levels, [False] * len(noise224))
    assert torch.equal(got, want)


def test_enhance_ops_exact_at_random_levels(photos32):
    """400 images, each at its own random level: the enhance ops match Pillow exactly (the fused
    multiply-add of commit 96e7740 put 3 of these 3.7M values one level off)."""
    gen = torch.Generator().manual_seed(0)
    images = photos32
    levels = 0.1 + 9.899 * torch.rand(len(images), generator=gen)
    negates = torch.zeros(len(images), dtype=torch.bool)
    bad = 0
    for name in ("color", "contrast", "sharpness", "brightness"):
        got, want = run_both(images, name, levels, negates)
        diff = (got.int() - want.int()).abs()
        bad += int((diff > 0).sum())
    assert bad == 0


# --- edge cases ----------------------------------------------------------------------------------


def tensor_set(batch: torch.Tensor) -> ImageSet:
    return image_set([Image.fromarray(im.permute(1, 2, 0).numpy(), mode="RGB") for im in batch])


EDGE_LEVELS = [0.1, 0.5, 1.0, 2.0, 3.3, 5.0, 7.7, 9.999]
EDGE_NEGATE = [False, True] * 4


@pytest.fixture(scope="module")
def flat_images() -> ImageSet:
    values = [0, 1, 77, 128, 200, 254, 255, 13]
    return tensor_set(torch.stack([torch.full((3, 16, 16), v, dtype=torch.uint8) for v in values]))


@pytest.mark.parametrize("name", O.ALL_OPS)
def test_flat_images(name, flat_images):
    got, want = run_both(flat_images, name, EDGE_LEVELS, EDGE_NEGATE)
    assert_matches_pillow(name, got, want)
    if name in ("autocontrast", "equalize"):
        # Pillow leaves a single-valued channel alone.
        assert torch.equal(got, flat_images.tensor)
    if name == "brightness":
        factors = torch.tensor([O.enhance_factor(float(np.float32(lv))) for lv in EDGE_LEVELS])
        want_values = (flat_images.tensor[:, 0, 0, 0].float() * factors).clamp(0, 255).floor()
        assert torch.equal(got[:, 0, 0, 0].float(), want_values)


@pytest.fixture(scope="module")
def two_valued() -> ImageSet:
    rng = np.random.default_rng(5)
    # 32x32: more than 255 pixels per value, so equalize does act (its step is >= 1).
    arrays = []
    for frac in (0.5, 0.3, 0.7, 0.5, 0.26, 0.9, 0.5, 0.6):
        arrays.append(np.where(rng.random((3, 32, 32)) < frac, 40, 200).astype(np.uint8))
    return tensor_set(torch.from_numpy(np.stack(arrays)))


@pytest.mark.parametrize("name", O.ALL_OPS)
def test_two_valued_images(name, two_valued):
    got, want = run_both(two_valued, name, EDGE_LEVELS, EDGE_NEGATE)
    # Interpolating between two values 160 apart with "round" shear factors (0.15) lands exactly on
    # whole numbers, which Pillow's float64 truncation sometimes puts one below: a float32 kernel was
    # one level apart on up to ~15% of pixels here.
    assert_matches_pillow(name, got, want)
    if name in ("autocontrast", "equalize"):
        # Both stretch {40, 200} to {0, 255} (equalize: each value holds >= 255 pixels).
        expected = torch.where(two_valued.tensor == 40, 0, 255).to(torch.uint8)
        assert torch.equal(got, expected)
    if name == "solarize":
        threshold = torch.tensor([O.solarize_threshold(float(np.float32(lv))) for lv in EDGE_LEVELS]).view(-1, 1, 1, 1)
        x = two_valued.tensor.int()
        assert torch.equal(got.int(), torch.where(x < threshold, x, 255 - x))


def test_equalize_leaves_sparse_values_alone():
    # Fewer than 255 pixels outside the top value: Pillow's step is 0 -> identity.
    image = np.full((3, 16, 16), 200, dtype=np.uint8)
    image[:, :4, :] = 40  # 64 pixels of 40
    images = tensor_set(torch.from_numpy(image)[None])
    got, want = run_both(images, "equalize", [1.0], [False])
    assert torch.equal(got, want) and torch.equal(got, images.tensor)


@pytest.mark.parametrize("name", O.ALL_OPS)
def test_one_constant_channel(name):
    rng = np.random.default_rng(9)
    batch = torch.from_numpy(rng.integers(0, 256, (8, 3, 24, 24), dtype=np.uint8))
    batch[:, 1] = 123
    images = tensor_set(batch)
    got, want = run_both(images, name, EDGE_LEVELS, EDGE_NEGATE)
    assert_matches_pillow(name, got, want)
    if name in ("autocontrast", "equalize"):
        assert torch.equal(got[:, 1], batch[:, 1])  # the flat channel is untouched
        assert not torch.equal(got[:, 0], batch[:, 0]) or name == "equalize"


@pytest.mark.parametrize("name", O.ALL_OPS)
@pytest.mark.parametrize("height, width", [(1, 1), (1, 2), (2, 1), (2, 3), (3, 2), (3, 3), (1, 9), (5, 7)])
def test_tiny_images(name, height, width):
    images = noise_set(8, height, width, seed=100 * height + width)
    got, want = run_both(images, name, EDGE_LEVELS, EDGE_NEGATE)
    assert_matches_pillow(name, got, want)
    if name == "sharpness" and min(height, width) < 3:
        # SMOOTH leaves border pixels alone, so an image without an interior is unchanged.
        assert torch.equal(got, images.tensor)


def test_translate_shifts_by_whole_pixels_with_black_fill():
    image = torch.arange(3 * 32 * 32, dtype=torch.int64).remainder(251).add(1).to(torch.uint8).view(1, 3, 32, 32)
    level = torch.tensor([3.0])  # int(3 * 32/3 / 10) = 3 pixels
    right = batched_ops.apply_op("translate_x", image, level, torch.tensor([False]))
    left = batched_ops.apply_op("translate_x", image, level, torch.tensor([True]))
    down = batched_ops.apply_op("translate_y", image, level, torch.tensor([False]))
    # PIL's affine maps output (x, y) to input (x + 3, y): content moves left by 3, black on the right.
    assert torch.equal(right[..., :29], image[..., 3:]) and int(right[..., 29:].max()) == 0
    assert torch.equal(left[..., 3:], image[..., :29]) and int(left[..., :3].max()) == 0
    assert torch.equal(down[..., :29, :], image[..., 3:, :]) and int(down[..., 29:, :].max()) == 0


def test_posterize_and_solarize_values():
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, 16, 16).contiguous()
    post = batched_ops.apply_op("posterize", values, torch.tensor([2.5, 7.5]), torch.tensor([False, False]))
    assert torch.equal(post[0], values[0] & 0b11100000)  # 3 bits
    assert torch.equal(post[1], values[1] & 0b10000000)  # 1 bit
    sol = batched_ops.apply_op("solarize", values, torch.tensor([5.0, 9.999]), torch.tensor([False, False]))
    v = values[0].int()
    assert torch.equal(sol[0].int(), torch.where(v < 128, v, 255 - v))
    assert torch.equal(sol[1].int(), torch.where(v < 1, v, 255 - v))


def test_per_sample_parameters_are_not_mixed_up(noise32):
    """One batch with a different level per image equals each image run alone."""
    levels = torch.tensor(LEVELS_32_BOTH_SIGNS, dtype=torch.float32)
    negates = torch.tensor(NEGATE_32)
    for name in O.ALL_OPS:
        together = batched_ops.apply_op(name, noise32.tensor, levels, negates)
        for i in (0, 5, 17, 25):
            alone = batched_ops.apply_op(name, noise32.tensor[i : i + 1], levels[i : i + 1], negates[i : i + 1])
            assert torch.equal(together[i], alone[0]), (name, i)


def test_unknown_op_name_raises():
    with pytest.raises(ValueError, match="ops"):
        batched_ops.apply_op("blur", torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.tensor([1.0]),
                             torch.tensor([False]))


# --- the kernels on a CUDA device ----------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", O.ALL_OPS)
@pytest.mark.parametrize("kind", ["noise32", "photos224"])
def test_cuda_kernels_match_cpu(name, kind, request):
    images = request.getfixturevalue(kind)
    n = len(images)
    gen = torch.Generator().manual_seed(3)
    levels = 0.1 + 9.899 * torch.rand(n, generator=gen)
    negates = torch.rand(n, generator=gen) < 0.5
    cpu = batched_ops.apply_op(name, images.tensor, levels, negates)
    cuda = batched_ops.apply_op(name, images.tensor.cuda(), levels, negates)
    assert cuda.is_cuda and cuda.dtype == torch.uint8
    diff = (cuda.cpu().int() - cpu.int()).abs()
    assert int(diff.max()) == 0, f"{name}: {int((diff > 0).sum())} values differ between CUDA and CPU"
