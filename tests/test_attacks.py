"""PGD L-inf: projection, direction, strength, determinism."""

from __future__ import annotations

import torch

from pixmix.evaluate.attacks import pgd_linf


def linear_model() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2, bias=False))
    with torch.no_grad():
        weight = torch.zeros(2, 48)
        weight[0, :24] = 1.0  # class 0 likes the first half
        weight[1, 24:] = 1.0  # class 1 the second
        model[1].weight.copy_(weight)
    return model


def test_pgd_stays_in_the_ball_and_moves_against_the_true_class() -> None:
    model = linear_model()
    images = torch.full((2, 3, 4, 4), 0.5)
    labels = torch.tensor([0, 1])
    eps = 2 / 255
    adv = pgd_linf(model, images, labels, epsilon=eps, steps=20, step_size=0.5 / 255, random_start=False)
    delta = (adv - images).flatten(1)
    assert delta.abs().max() <= eps + 1e-7 and adv.min() >= 0 and adv.max() <= 1
    # For the linear model the loss gradient's sign is fixed: 20 steps of 0.5/255 saturate at +-epsilon.
    full = torch.full((24,), eps)
    assert torch.allclose(delta[0, :24], -full) and torch.allclose(delta[0, 24:], full)
    assert torch.allclose(delta[1, :24], full) and torch.allclose(delta[1, 24:], -full)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_pgd_flips_a_prediction_near_the_boundary_and_respects_pixel_bounds() -> None:
    model = linear_model()
    images = torch.zeros(1, 3, 4, 4)
    images.view(1, -1)[0, :24] = 0.51  # class 0 wins by 24 * 0.01 = 0.24 ...
    images.view(1, -1)[0, 24:] = 0.50
    labels = torch.tensor([0])
    assert model(images).argmax(1).item() == 0
    adv = pgd_linf(model, images, labels, random_start=False)
    assert model(adv).argmax(1).item() == 1  # ... and loses by 48 * 2/255 - 0.24 > 0 after the attack
    black = pgd_linf(model, torch.zeros(1, 3, 4, 4), labels, random_start=False)
    assert black.min() == 0  # never below 0


def test_random_start_is_seeded_and_leaves_the_global_rng_alone() -> None:
    model = linear_model()
    images, labels = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 0])
    state = torch.random.get_rng_state()
    a = pgd_linf(model, images, labels, steps=0, generator=torch.Generator().manual_seed(5))
    b = pgd_linf(model, images, labels, steps=0, generator=torch.Generator().manual_seed(5))
    c = pgd_linf(model, images, labels, steps=0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a - images).abs().max() <= 2 / 255 + 1e-7 and (a - images).abs().max() > 0
    assert torch.equal(torch.random.get_rng_state(), state)
