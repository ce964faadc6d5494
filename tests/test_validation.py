"""Bad input fails early with a ValueError (a PixmixError) that names the parameter and the offending value."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from pixmix.augment.config import PixMixConfig
from pixmix.augment.params import sample_params
from pixmix.augment.pixmix import PixMix, apply_batch, pixmix_batch
from pixmix.augment.recipes import get_recipe
from pixmix.augment.transforms import RandomCrop, RandomHorizontalFlip
from pixmix.models.checkpoints import load_checkpoint, load_pretrained, model_from_checkpoint, save_checkpoint
from pixmix.models.networks import WideResNet, build_model
from pixmix.utils.errors import PixmixError


def u8(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, dtype=torch.uint8)


def rgb(width: int = 32, height: int = 32) -> Image.Image:
    return Image.new("RGB", (width, height), (10, 20, 30))


# (keyword arguments, regex: the parameter name and the bad value both appear)
BAD_HYPERPARAMETERS = [
    (dict(k=-1), r"k must be an integer >= 0, got -1"),
    (dict(k=1.5), r"k must be an integer >= 0, got 1\.5"),
    (dict(k=True), r"k must be an integer >= 0, got True"),
    (dict(k="4"), r"k must be an integer >= 0, got '4'"),
    (dict(beta=0), r"beta must be a finite number > 0, got 0"),
    (dict(beta=-1), r"beta must be a finite number > 0, got -1"),
    (dict(beta=math.nan), r"beta must be a finite number > 0, got nan"),
    (dict(beta=math.inf), r"beta must be a finite number > 0, got inf"),
    (dict(beta=True), r"beta must be a finite number > 0, got True"),
    (dict(severity=0), r"severity must be a number in \[0\.1, 10\], got 0"),
    (dict(severity=11), r"severity must be a number in \[0\.1, 10\], got 11"),
    (dict(severity=0.05), r"severity .*got 0\.05"),
    (dict(severity=math.nan), r"severity .*got nan"),
    (dict(ops="fancy"), r"ops .*got 'fancy'"),
    (dict(ops=["rotate", "blur"]), r"ops: unknown op name\(s\) \['blur'\]"),
    (dict(ops=[]), r"ops must name at least one op, got an empty list"),
]


@pytest.mark.parametrize("kwargs, message", BAD_HYPERPARAMETERS, ids=[repr(k) for k, _ in BAD_HYPERPARAMETERS])
def test_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PixMixConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", BAD_HYPERPARAMETERS, ids=[repr(k) for k, _ in BAD_HYPERPARAMETERS])
def test_pixmix_class_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PixMix(**kwargs)


@pytest.mark.parametrize("kwargs, message", BAD_HYPERPARAMETERS, ids=[repr(k) for k, _ in BAD_HYPERPARAMETERS])
def test_pixmix_batch_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pixmix_batch(u8(2, 3, 8, 8), u8(2, 3, 8, 8), generator=torch.Generator().manual_seed(0), **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [dict(k=0), dict(k=10), dict(beta=1e-3), dict(beta=1e3), dict(severity=0.1), dict(severity=10),
     dict(ops=["rotate"])],
)
def test_boundary_values_are_accepted(kwargs):
    config = PixMixConfig(**kwargs)
    for name, value in kwargs.items():
        got = config.op_names if name == "ops" else getattr(config, name)
        assert got == (tuple(value) if name == "ops" else value)


# --- pixmix_batch inputs -----------------------------------------------------------------------------

BAD_BATCHES = [
    (torch.zeros(2, 3, 8, 8), u8(2, 3, 8, 8), r"images must have dtype torch\.uint8.*got torch\.float32"),
    (u8(2, 3, 8, 8), torch.zeros(2, 3, 8, 8, dtype=torch.int16),
     r"mixing must have dtype torch\.uint8.*got torch\.int16"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.int16), u8(2, 3, 8, 8), r"images must have dtype .*torch\.int16"),
    (u8(2, 4, 8, 8), u8(2, 4, 8, 8), re.escape("images must have shape [B, 3, H, W], got [2, 4, 8, 8]")),
    (u8(2, 1, 8, 8), u8(2, 1, 8, 8), re.escape("images must have shape [B, 3, H, W], got [2, 1, 8, 8]")),
    (u8(3, 8, 8), u8(3, 8, 8), re.escape("images must have shape [B, 3, H, W], got [3, 8, 8]")),
    (u8(2, 3, 8, 8), u8(2, 3, 8, 8, 1), re.escape("mixing must have shape [B, 3, H, W], got [2, 3, 8, 8, 1]")),
    (u8(2, 3, 8, 8), u8(3, 3, 8, 8),
     re.escape("images and mixing must have the same shape, got [2, 3, 8, 8] and [3, 3, 8, 8]")),
    (u8(2, 3, 8, 8), u8(2, 3, 8, 9),
     re.escape("images and mixing must have the same shape, got [2, 3, 8, 8] and [2, 3, 8, 9]")),
    (np.zeros((2, 3, 8, 8), np.uint8), u8(2, 3, 8, 8), r"images must be a torch\.Tensor, got ndarray"),
    (u8(2, 3, 8, 8), [[0]], r"mixing must be a torch\.Tensor, got list"),
    (u8(2, 3, 0, 8), u8(2, 3, 0, 8), r"images must have non-empty images, got \[2, 3, 0, 8\]"),
]


@pytest.mark.parametrize("images, mixing, message", BAD_BATCHES, ids=[m[:40] for _, _, m in BAD_BATCHES])
def test_pixmix_batch_rejects_bad_tensors(images, mixing, message):
    with pytest.raises(ValueError, match=message):
        pixmix_batch(images, mixing, generator=torch.Generator().manual_seed(0))


def test_bad_batch_does_not_consume_the_generator():
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    with pytest.raises(ValueError, match="images"):
        pixmix_batch(torch.zeros(2, 3, 8, 8), u8(2, 3, 8, 8), generator=gen)
    assert torch.equal(gen.get_state(), state)


def test_apply_batch_rejects_mismatched_params():
    config = PixMixConfig()
    params = sample_params(config, 3, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"params must hold 2 samples with k=4, got 3 with k=4"):
        apply_batch(u8(2, 3, 8, 8), u8(2, 3, 8, 8), params, config)
    with pytest.raises(ValueError, match=r"params must hold 3 samples with k=2, got 3 with k=4"):
        apply_batch(u8(3, 3, 8, 8), u8(3, 3, 8, 8), params, PixMixConfig(k=2))


@pytest.mark.parametrize("batch_size", [-1, 1.5, True, "2"])
def test_sample_params_rejects_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match=f"batch_size must be an integer >= 0, got {re.escape(repr(batch_size))}"):
        sample_params(PixMixConfig(), batch_size, torch.Generator().manual_seed(0))


# --- PixMix (per image) inputs -------------------------------------------------------------------

BAD_IMAGES = [
    (np.zeros((32, 32, 3), np.uint8), rgb(), r"image must be a PIL\.Image\.Image, got ndarray"),
    (torch.zeros(3, 32, 32, dtype=torch.uint8), rgb(), r"image must be a PIL\.Image\.Image, got Tensor"),
    (rgb(), None, r"mixing_picture must be a PIL\.Image\.Image, got NoneType"),
    (rgb().convert("L"), rgb(), r"image must be an RGB image, got mode 'L'"),
    (rgb(), rgb().convert("RGBA"), r"mixing_picture must be an RGB image, got mode 'RGBA'"),
    (rgb().convert("RGBA"), rgb(), r"image must be an RGB image, got mode 'RGBA'"),
    (rgb(32, 32), rgb(32, 31),
     re.escape("image and mixing_picture must have the same size, got (32, 32) and (32, 31)")),
    (rgb(16, 16), rgb(16, 16), r"image_size is 32, but the images are 16x16"),
    (rgb(32, 16), rgb(32, 16), r"image_size is 32, but the images are 32x16"),
]


@pytest.mark.parametrize("image, picture, message", BAD_IMAGES, ids=[m[:40] for _, _, m in BAD_IMAGES])
def test_pixmix_call_rejects_bad_images(image, picture, message):
    with pytest.raises(ValueError, match=message):
        PixMix.cifar()(image, picture, torch.Generator().manual_seed(0))


def test_pixmix_without_image_size_accepts_any_matching_size():
    out = PixMix(image_size=None)(rgb(20, 12), rgb(20, 12), torch.Generator().manual_seed(0))
    assert out.shape == (3, 12, 20)
    with pytest.raises(ValueError, match="image and mixing_picture must have the same size"):
        PixMix(image_size=None)(rgb(20, 12), rgb(12, 20), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("image_size", [0, -3, 2.5, True, "32"])
def test_pixmix_rejects_bad_image_size(image_size):
    expected = f"image_size must be a positive integer or None, got {re.escape(repr(image_size))}"
    with pytest.raises(ValueError, match=expected):
        PixMix(image_size=image_size)


def test_pixmix_apply_rejects_params_of_another_shape():
    pm = PixMix.cifar()
    params = sample_params(pm.config, 2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"params must hold one sample with k=4, got batch_size=2, k=4"):
        pm.apply(rgb(), rgb(), params)
    params_k2 = sample_params(PixMixConfig(k=2), 1, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"params must hold one sample with k=4, got batch_size=1, k=2"):
        pm.apply(rgb(), rgb(), params_k2)


# --- user errors are PixmixErrors that name the parameter at fault ----------------------------------


@pytest.mark.parametrize("kwargs, message", BAD_HYPERPARAMETERS, ids=[repr(k) for k, _ in BAD_HYPERPARAMETERS])
def test_bad_hyperparameters_name_their_parameter(kwargs, message):
    with pytest.raises(PixmixError, match=message) as err:
        PixMixConfig(**kwargs)
    assert err.value.param == next(iter(kwargs))


def test_bad_inputs_name_their_parameter():
    cases = [
        (lambda: PixMix(image_size=0), "image_size"),
        (lambda: PixMix(partners="neither"), "partners"),
        (lambda: pixmix_batch(u8(2, 3, 8, 8), u8(3, 3, 8, 8)), "mixing"),
        (lambda: pixmix_batch(torch.zeros(2, 3, 8, 8), u8(2, 3, 8, 8)), "images"),
        (lambda: PixMix.cifar()(rgb(16, 16), rgb(16, 16)), "image"),
        (lambda: sample_params(PixMixConfig(), -1), "batch_size"),
        (lambda: get_recipe("svhn"), "recipe"),
        (lambda: RandomCrop(0), "size"),
        (lambda: RandomCrop(4, padding=-1), "padding"),
        (lambda: RandomHorizontalFlip(p=2.0), "p"),
        (lambda: build_model("vit", 10), "arch"),
        (lambda: WideResNet(depth=11), "depth"),
    ]
    for make, param in cases:
        with pytest.raises(PixmixError) as err:
            make()
        assert err.value.param == param, (param, str(err.value))


def test_bad_checkpoints_are_one_line_pixmix_errors(tmp_path):
    with pytest.raises(PixmixError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(PixmixError, match="not a loadable weights-only checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(PixmixError, match="not a pixmix-checkpoint file"):
        load_checkpoint(tmp_path / "other.pt")
    save_checkpoint(tmp_path / "broken.pt", {"model": {"arch": "smoke", "num_classes": 10}, "model_state": {}})
    with pytest.raises(PixmixError, match=r"broken.pt: malformed pixmix-checkpoint file \(RuntimeError"):
        model_from_checkpoint(tmp_path / "broken.pt")
    save_checkpoint(tmp_path / "arch.pt", {"model": {"arch": "vit", "num_classes": 10}, "model_state": {}})
    with pytest.raises(PixmixError, match="arch.pt: --arch: unknown model .vit.; `pixmix train --list-archs`"):
        model_from_checkpoint(tmp_path / "arch.pt")
    with pytest.raises(PixmixError, match="parameter shapes differ"):
        save_checkpoint(tmp_path / "small.pt", {"model_state": build_model("smoke", 10, width=8).state_dict()})
        load_pretrained(build_model("smoke", 10), tmp_path / "small.pt")
