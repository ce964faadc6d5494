"""Edge cases of the batched path: empty and single-image batches, non-square images."""

from __future__ import annotations

import torch

from pixmix import PixMix, apply_batch, pixmix_batch, sample_params
from pixmix.augment.transforms import to_uint8_tensor
from pixmix.demo import synthetic_images, synthetic_mixing_pictures


def test_empty_batch_gives_an_empty_float_batch() -> None:
    empty = torch.zeros((0, 3, 8, 8), dtype=torch.uint8)
    out = pixmix_batch(empty, empty, generator=torch.Generator().manual_seed(0))
    assert out.shape == (0, 3, 8, 8) and out.dtype == torch.float32


def test_non_square_images_match_the_per_image_path() -> None:
    """translate_x moves by a third of the width, translate_y of the height, in both paths."""
    height, width, n = 24, 40, 200
    # Rendered square, then cropped: synthetic_images makes square pictures.
    images = [im.crop((0, 0, width, height)) for im in synthetic_images(n, width, seed=3)]
    pictures = [im.crop((0, 0, width, height)) for im in synthetic_mixing_pictures(n, width, seed=4)]
    pixmix = PixMix(k=3, beta=2.0, severity=6.0, ops=["translate_x", "translate_y", "shear_y", "rotate"])
    params = sample_params(pixmix.config, n, torch.Generator().manual_seed(9))
    x = torch.stack([to_uint8_tensor(im) for im in images])
    m = torch.stack([to_uint8_tensor(im) for im in pictures])
    batched = apply_batch(x, m, params, pixmix.config)
    per_image = torch.stack([pixmix.apply(images[i], pictures[i], params.select(i)) for i in range(n)])
    assert batched.shape == (n, 3, height, width)
    assert (batched - per_image).abs().max().item() < 1e-4
    # A single-image batch is the first row of the full one.
    single = apply_batch(x[:1], m[:1], params.slice(0, 1), pixmix.config)
    assert torch.equal(single[0], batched[0])
