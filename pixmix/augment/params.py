"""Sampling PixMix's random choices, separately from applying them.

Every choice of a batch is drawn here from one explicit ``torch.Generator``, in a fixed order, as
plain tensors. Both augmentation paths consume the same :class:`PixMixParams`, so a seed fixes a batch
whichever path (or device) applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from pixmix.augment.config import PixMixConfig
from pixmix.augment.ops import MIN_LEVEL
from pixmix.utils.errors import PixmixError


@dataclass(frozen=True)
class PixMixParams:
    """All random choices for B samples with at most k rounds.

    Op slot 0 is the optional augmentation of the starting image; slot r+1 is the optional
    augmentation used as the partner of round r. Unused slots are drawn anyway (fixed draw order)
    and ignored.
    """

    op: torch.Tensor  # [B, k+1] int64: index into the config's op list
    level: torch.Tensor  # [B, k+1] float32: Uniform(0.1, severity)
    negate: torch.Tensor  # [B, k+1] bool: sign flip for signed ops
    start_augmented: torch.Tensor  # [B] bool
    rounds: torch.Tensor  # [B] int64 in {0..k}
    partner_augmented: torch.Tensor  # [B, k] bool: partner is augment(orig) rather than the mixing picture
    multiplicative: torch.Tensor  # [B, k] bool: mixing op of the round
    a: torch.Tensor  # [B, k] float32
    b: torch.Tensor  # [B, k] float32

    @property
    def batch_size(self) -> int:
        return int(self.rounds.shape[0])

    @property
    def k(self) -> int:
        return int(self.a.shape[1])

    def to(self, device: torch.device | str) -> PixMixParams:
        return PixMixParams(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, index: int) -> PixMixParams:
        """The params of one sample, as a batch of one."""
        return self.slice(index, index + 1)

    def slice(self, start: int, stop: int) -> PixMixParams:
        """The params of samples ``start`` to ``stop - 1``."""
        return PixMixParams(**{f.name: getattr(self, f.name)[start:stop] for f in fields(self)})

    @classmethod
    def cat(cls, parts: Sequence[PixMixParams]) -> PixMixParams:
        """The params of several batches as one batch, in order (e.g. per-sample params collated)."""
        if not parts:
            raise ValueError("PixMixParams.cat needs at least one PixMixParams")
        ks = {p.k for p in parts}
        if len(ks) != 1:
            raise ValueError(f"PixMixParams.cat: all parts must have the same k, got {sorted(ks)}")
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def round_active(self) -> torch.Tensor:
        """[B, k] bool: round r is performed for the sample."""
        steps = torch.arange(self.k, device=self.rounds.device)
        return steps.unsqueeze(0) < self.rounds.unsqueeze(1)

    def slot_used(self) -> torch.Tensor:
        """[B, k+1] bool: the op slot's augmented image is actually needed."""
        rounds_aug = self.round_active() & self.partner_augmented
        return torch.cat([self.start_augmented.unsqueeze(1), rounds_aug], dim=1)


def sample_params(
    config: PixMixConfig, batch_size: int, generator: torch.Generator | None = None
) -> PixMixParams:
    """Draw every random choice of ``batch_size`` samples from ``generator``.

    The params live on the generator's device. A CPU generator gives the same params for a CPU and a
    CUDA batch, which is what makes a seed reproduce a batch on either device.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise PixmixError(f"batch_size must be an integer >= 0, got {batch_size!r}", param="batch_size")
    gen = generator if generator is not None else fresh_generator()
    dev = gen.device
    k, n_ops = config.k, len(config.op_names)
    slots = (batch_size, k + 1)
    pairs = (batch_size, k)

    def uniform(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.rand(shape, generator=gen, device=dev)

    op = torch.randint(0, n_ops, slots, generator=gen, device=dev)
    level = MIN_LEVEL + (config.severity - MIN_LEVEL) * uniform(slots)
    negate = uniform(slots) < 0.5
    start_augmented = uniform((batch_size,)) < 0.5
    rounds = torch.randint(0, k + 1, (batch_size,), generator=gen, device=dev)
    partner_augmented = uniform(pairs) < 0.5
    if config.partners != "both":  # drawn all the same, so the other choices match PixMix's draw for draw
        partner_augmented = torch.full_like(partner_augmented, config.partners == "augmented")
    multiplicative = uniform(pairs) < 0.5
    extrapolate = uniform(pairs) < 0.5
    # Inverse CDFs: Beta(beta, 1) = U^(1/beta) and Beta(1, beta) = 1 - U^(1/beta), U = 1 - rand in (0, 1].
    inv = 1.0 / config.beta
    # Clamped to the smallest normal float: a draw that underflowed is a tiny positive number, and the
    # batched multiplicative kernel relies on a > 0.
    beta_b1 = ((1.0 - uniform(pairs)) ** inv).clamp_(min=torch.finfo(torch.float32).tiny)  # Beta(beta, 1)
    beta_1b_first = 1.0 - (1.0 - uniform(pairs)) ** inv  # Beta(1, beta)
    beta_1b_second = 1.0 - (1.0 - uniform(pairs)) ** inv  # Beta(1, beta), independent
    a = torch.where(extrapolate, 1.0 + beta_1b_first, beta_b1)
    b = torch.where(extrapolate, -beta_1b_second, beta_1b_second)
    return PixMixParams(
        op=op,
        level=level,
        negate=negate,
        start_augmented=start_augmented,
        rounds=rounds,
        partner_augmented=partner_augmented,
        multiplicative=multiplicative,
        a=a,
        b=b,
    )


def fresh_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from OS entropy: used only when the caller passes no generator."""
    gen = torch.Generator(device=device)
    gen.seed()
    return gen
