"""Untargeted L-inf PGD in [0, 1] pixel space (spec section 7: epsilon 2/255, 20 steps of 0.5/255)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def pgd_linf(
    model: torch.nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    epsilon: float = 2 / 255,
    steps: int = 20,
    step_size: float = 0.5 / 255,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    normalize: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Adversarial versions of ``images`` (float ``[B, 3, H, W]`` in [0, 1]) within ``epsilon`` in L-inf.

    Each step ascends the cross-entropy along the gradient's sign and projects back onto the epsilon
    ball and [0, 1]. ``normalize`` is applied inside (the model sees normalised inputs, the attack
    works in pixel space). The random start is drawn from ``generator`` (CPU), never the global RNG.
    The model's parameters get no gradients and its train/eval mode is left as it was.
    """
    if epsilon < 0 or steps < 0 or step_size <= 0:
        raise ValueError(f"need epsilon >= 0, steps >= 0, step_size > 0; got {epsilon}, {steps}, {step_size}")
    if images.dtype not in (torch.float32, torch.float64) or images.dim() != 4:
        raise ValueError(f"images must be float [B, C, H, W] in [0, 1], got {images.dtype} {list(images.shape)}")
    original = images.detach()
    x = original.clone()
    if random_start and epsilon > 0:
        noise = torch.rand(original.shape, generator=generator, dtype=original.dtype)
        x = (x + (noise.to(x.device) * 2 - 1) * epsilon).clamp_(0, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            x.requires_grad_(True)
            logits = model(normalize(x) if normalize is not None else x)
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels), x)
            with torch.no_grad():
                x = x + step_size * grad.sign()
                x = torch.min(torch.max(x, original - epsilon), original + epsilon).clamp_(0, 1)
    finally:
        for p in params:
            p.requires_grad_(True)
    return x.detach()
