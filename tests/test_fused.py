"""The fused (compiled) mixing kernels' fallback to eager torch."""

from __future__ import annotations

import pytest
import torch

from pixmix import mixing


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
    rows, partners = torch.tensor([2, 0, 3]), torch.tensor([[5, 4, 3, 1]])
    a, b = torch.rand(1, 4, generator=gen) + 0.5, torch.rand(1, 4, generator=gen) - 0.5
    kernel = mixing.fused_kernel("multiply")
    with pytest.warns(UserWarning, match="torch.compile failed for the fused multiply kernel"):
        out = kernel(mixed.clone(), rows, 0, 3, 0, pool, partners, a, b)
    expected = mixing.multiply_rows_(mixed.clone(), rows, 0, 3, 0, pool, partners, a, b)
    assert torch.equal(out, expected)
    assert not torch.equal(out, mixed)  # the rows were really mixed
    assert torch.equal(out[1], mixed[1])  # row 1 is not in rows[0:3]
    assert mixing.fused_kernel("multiply") is mixing.multiply_rows_  # no second warning, no retry
