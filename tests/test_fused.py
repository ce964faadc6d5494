"""The fused (compiled) mixing kernels' fallback to eager torch."""

from __future__ import annotations

import pytest
import torch

from pixmix.augment import mixing


def test_compile_failure_warns_once_and_falls_back_to_eager(monkeypatch) -> None:
    def broken_compile(fn, **kwargs):
        def raise_(*args):
            raise RuntimeError("no Triton here")

        return raise_

    monkeypatch.setattr(mixing.torch, "compile", broken_compile)
    monkeypatch.setattr(mixing, "_COMPILED", {})
    gen = torch.Generator().manual_seed(0)
    pool = torch.randint(0, 256, (6, 3, 5, 5), dtype=torch.uint8, generator=gen)
    mixed = torch.rand(4, 3, 5, 5, generator=gen)
    partners = torch.tensor([[0, 0, 0, 0], [5, 4, 3, 1]])
    a, b = torch.rand(2, 4, generator=gen) + 0.5, torch.rand(2, 4, generator=gen) - 0.5
    kernel = mixing.fused_kernel("multiply")
    with pytest.warns(UserWarning, match="torch.compile failed for the fused multiply kernel"):
        out = mixed.clone()
        kernel(out, 1, 3, 1, pool, partners, a, b)
    expected = mixed.clone()
    mixing.multiply_u8_(expected[1:3], pool[partners[1, 1:3]], a[1, 1:3].view(-1, 1, 1, 1), b[1, 1:3].view(-1, 1, 1, 1))
    assert (out - expected).abs().max().item() < 1e-6
    assert not torch.equal(out[1:3], mixed[1:3])  # the run was really mixed
    assert torch.equal(out[0], mixed[0]) and torch.equal(out[3], mixed[3])  # rows outside the run untouched
    assert mixing.fused_kernel("multiply") is mixing.multiply_run_  # no second warning, no retry
