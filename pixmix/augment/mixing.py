"""The two PixMix mixing operations on float images in [0, 1] (spec section 2)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

Tensor = torch.Tensor

# The reference clamps the partner away from zero before raising it to a (possibly negative) power.
MULTIPLY_FLOOR = 1e-37


def additive(x1: Tensor, x2: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
    """``a*(2x1-1) + b*(2x2-1)`` mapped back to [0, 1], in the reference's order of operations."""
    return (a * (x1 * 2 - 1) + b * (x2 * 2 - 1) + 1) / 2


def multiplicative(x1: Tensor, x2: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
    """The weighted geometric mean ``(2x1)^a * (2*max(x2, 1e-37))^b / 2``."""
    return (x1 * 2) ** a * ((x2.clamp(min=MULTIPLY_FLOOR) * 2) ** b) / 2


# In-place kernels for the batched path: ``x1`` is float in [0, 1] and is overwritten with the clipped
# result; ``x2`` is the partner as uint8, its 1/255 scale folded into per-sample constants.
_LOG_FLOOR_U8 = MULTIPLY_FLOOR * 255.0
_LOG_2_OVER_255 = math.log(2.0 / 255.0)
_LOG2_2_OVER_255 = math.log2(2.0 / 255.0)


def add_u8_(x1: Tensor, x2: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """In place: ``x1 = clip(a*x1 + b*x2/255 + (1-a-b)/2, 0, 1)``."""
    x1.mul_(a).addcmul_(x2.float(), b / 255.0).add_((1.0 - a - b) / 2.0)
    return x1.clamp_(0.0, 1.0)


def multiply_u8_(x1: Tensor, x2: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """In place: ``x1 = clip((2*x1)^a * (2*max(x2/255, 1e-37))^b / 2, 0, 1)``."""
    if x1.is_cuda:
        # a > 0 always (the sampler never draws 0), so log(0) = -inf gives 0**a = 0 as torch.pow does.
        x1.mul_(2).log_().mul_(a)
        x1.addcmul_(x2.float().clamp_(min=_LOG_FLOOR_U8).log_(), b)
        # (2*x2/255)^b = x2^b * exp(b*log(2/255)); the final 1/2 joins that per-sample factor.
        x1.exp_().mul_(torch.exp(b * _LOG_2_OVER_255) / 2.0)
        return x1.clamp_(0.0, 1.0)
    # CPU: in base 2, 2^(a*(1 + log2 x1) + b*log2 x2' + b*log2(2/255) - 1), with numpy's SIMD log2
    # (about 3x faster than torch's log on this kind of machine) working in place on the same memory.
    partner = x2.float().clamp_(min=_LOG_FLOOR_U8)
    with np.errstate(divide="ignore"):  # log2(0) = -inf is intended: 0**a = 0
        np.log2(x1.numpy(), out=x1.numpy())
    np.log2(partner.numpy(), out=partner.numpy())
    x1.add_(1.0).mul_(a).addcmul_(partner, b).add_(b * _LOG2_2_OVER_255 - 1.0)
    torch.exp2(x1, out=x1)
    return x1.clamp_(0.0, 1.0)


# Fused variants for the GPU: one pass per run of samples that gathers their partners from the uint8
# pool, mixes, clips and stores in place into rows [begin, end) of ``mixed``, taking round ``r``'s
# partner indices and coefficients from ``[k, n]`` tables. Eager torch would run about ten
# memory-bound kernels per run; compiled (torch.compile with Triton) they become one. Rows and round
# are ints, not views, so one dynamic-shape graph serves every run and nothing is copied to the GPU
# per run. Pure torch: they also run eagerly on the CPU, where the tests compare them with the
# kernels above.
def add_run_(
    mixed: Tensor, begin: int, end: int, r: int, pool: Tensor, partners: Tensor, a: Tensor, b: Tensor
) -> Tensor:
    """In place on ``mixed[begin:end]``: :func:`add_u8_` with ``x2 = pool[partners[r, begin:end]]``."""
    x1 = mixed[begin:end]
    x2 = pool[partners[r, begin:end]].float()
    a_r, b_r = a[r, begin:end].view(-1, 1, 1, 1), b[r, begin:end].view(-1, 1, 1, 1)
    return x1.copy_((x1 * a_r + x2 * (b_r / 255.0) + (1.0 - a_r - b_r) / 2.0).clamp(0.0, 1.0))


def multiply_run_(
    mixed: Tensor, begin: int, end: int, r: int, pool: Tensor, partners: Tensor, a: Tensor, b: Tensor
) -> Tensor:
    """In place on ``mixed[begin:end]``: :func:`multiply_u8_` with ``x2 = pool[partners[r, begin:end]]``."""
    x1 = mixed[begin:end]
    x2 = pool[partners[r, begin:end]].float().clamp(min=_LOG_FLOOR_U8)
    a_r, b_r = a[r, begin:end].view(-1, 1, 1, 1), b[r, begin:end].view(-1, 1, 1, 1)
    log_mix = a_r * torch.log(x1 * 2.0) + b_r * torch.log(x2)
    return x1.copy_((torch.exp(log_mix) * (torch.exp(b_r * _LOG_2_OVER_255) / 2.0)).clamp(0.0, 1.0))


RUN_KERNELS: dict[str, Callable[..., Tensor]] = {"add": add_run_, "multiply": multiply_run_}
_COMPILED: dict[str, Callable[..., Tensor]] = {}


def fused_kernel(name: str) -> Callable[..., Tensor]:
    """The compiled (CUDA) version of :func:`add_run_` or :func:`multiply_run_`, built once.

    If compilation fails (an unsupported toolchain, say), it warns once and the eager kernel serves
    from then on: slower, same numbers.
    """
    if name not in _COMPILED:
        compiled = torch.compile(RUN_KERNELS[name], dynamic=True, fullgraph=True)

        def run(*args: Any) -> Tensor:
            if _COMPILED[name] is run:
                try:
                    return compiled(*args)
                except Exception as exc:  # noqa: BLE001 - any compiler failure means "use eager"
                    warnings.warn(f"torch.compile failed for the fused {name} kernel, using eager torch: {exc}",
                                  stacklevel=2)
                    _COMPILED[name] = RUN_KERNELS[name]
            return RUN_KERNELS[name](*args)

        _COMPILED[name] = run
    return _COMPILED[name]


def compile_available() -> bool:
    """Whether torch.compile can build GPU kernels here (it needs Triton)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
