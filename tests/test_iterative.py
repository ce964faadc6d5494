"""Iterative PixMix (Table 5's "Iterative" row): the pure-torch FVis renderer and the rolling pool of
feature visualisations of the network being trained."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mixset.sources.fvis as fv
from pixmix.models import fvis_render as fr


@pytest.mark.parametrize("size", [32, 33, 57])
def test_ported_transforms_equal_lucents_bit_for_bit(size):
    """The pure-torch port of Lucent's standard_transforms gives the very bytes Lucent's closures give
    (kornia 0.4.1), for 40 consecutive draws of one seeded stream, and leaves the global numpy RNG alone."""
    np.random.seed(11)
    before = np.random.get_state()[1].copy()
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(size))
    ours = fr._LucentTransforms(1234, torch.device("cpu"))
    ref = fv._LucentReferenceTransforms(1234, torch.device("cpu"))
    for _ in range(40):
        a, b = ours(images), ref(images)
        assert a.shape == b.shape
        assert torch.equal(a, b)
    assert np.array_equal(np.random.get_state()[1], before)


def test_renderer_is_reexported_by_mixset():
    assert fv.render_units is fr.render_units and fv.truncated_trunk is fr.truncated_trunk
