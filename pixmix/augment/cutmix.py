"""CutMix (Yun et al., 2019) for a batch: a box of one image pasted over another, the labels mixed by area.

As the reference code (clovaai/CutMix-PyTorch, ``train.py``: ``--beta 1.0 --cutmix_prob 0.5``): with
probability ``prob`` per batch, draw ``lam ~ Beta(beta, beta)``, a permutation of the batch and a box of
``int(side * sqrt(1 - lam))`` pixels per side around a uniformly drawn centre, clipped to the image; the box
of image ``perm[i]`` replaces the same box of image ``i`` and ``lam`` becomes the exact share of pixels kept,
``1 - box area / image area``. The loss is ``lam * CE(y) + (1 - lam) * CE(y[perm])``.

Sampling (:func:`sample_cutmix`, from an explicit numpy generator) is separate from applying
(:func:`apply_cutmix`, :func:`cutmix_loss`), as for PixMix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pixmix.utils.errors import PixmixError


@dataclass(frozen=True)
class CutMixBox:
    """One batch's CutMix: rows ``[top, bottom)`` and columns ``[left, right)`` of image ``perm[i]`` pasted
    into image ``i``; ``lam`` is the share of each image's own pixels left (``1 - area / (height * width)``)."""

    top: int
    left: int
    bottom: int
    right: int
    perm: torch.Tensor  # int64 [B], on the CPU
    lam: float

    @property
    def area(self) -> int:
        """Pixels in the box."""
        return (self.bottom - self.top) * (self.right - self.left)


def _box_edges(centre: int, cut: int, size: int) -> tuple[int, int]:
    """``[centre - cut // 2, centre + cut // 2)`` clipped to ``[0, size]`` (the reference's ``np.clip``)."""
    return min(max(centre - cut // 2, 0), size), min(max(centre + cut // 2, 0), size)


def sample_cutmix(
    batch_size: int, height: int, width: int, *, prob: float, rng: np.random.Generator, beta: float = 1.0
) -> CutMixBox | None:
    """Draw a batch's CutMix (None: not applied to this batch, probability ``1 - prob``).

    The draws are the reference's, in its order: the coin, ``lam``, the permutation, the box centre.
    """
    if not 0.0 <= prob <= 1.0 or not math.isfinite(prob):
        raise PixmixError(f"cutmix probability must be in [0, 1], got {prob!r}", param="cutmix")
    if not beta > 0 or not math.isfinite(beta):
        raise PixmixError(f"cutmix beta must be a finite number > 0, got {beta!r}", param="cutmix_beta")
    if batch_size < 1 or height < 1 or width < 1:
        raise PixmixError(f"cutmix needs a non-empty batch of images, got {batch_size} x {height} x {width}")
    if not rng.random() < prob:
        return None
    lam = float(rng.beta(beta, beta))
    perm = torch.from_numpy(rng.permutation(batch_size).astype(np.int64))
    cut_rat = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut_rat), int(width * cut_rat)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = _box_edges(cy, cut_h, height)
    left, right = _box_edges(cx, cut_w, width)
    kept = 1.0 - (bottom - top) * (right - left) / (height * width)
    return CutMixBox(top=top, left=left, bottom=bottom, right=right, perm=perm, lam=kept)


def apply_cutmix(images: torch.Tensor, box: CutMixBox) -> torch.Tensor:
    """``images`` ``[B, C, H, W]`` (any dtype and device) with ``box`` pasted in; a new tensor, the input untouched.

    Pasting commutes with per-channel normalisation, so normalised images give the same result as raw ones.
    """
    if images.dim() != 4 or images.shape[0] != box.perm.numel():
        raise PixmixError(f"cutmix: expected images [{box.perm.numel()}, C, H, W], got {list(images.shape)}")
    out = images.clone()
    rows, cols = slice(box.top, box.bottom), slice(box.left, box.right)
    out[:, :, rows, cols] = images[box.perm.to(images.device), :, rows, cols]
    return out


def cutmix_loss(logits: torch.Tensor, labels: torch.Tensor, box: CutMixBox | None) -> torch.Tensor:
    """Cross-entropy of ``logits``: ``lam * CE(labels) + (1 - lam) * CE(labels[perm])`` under ``box``, plain
    CE without one."""
    loss = F.cross_entropy(logits, labels)
    if box is None:
        return loss
    partner = labels[box.perm.to(labels.device)]
    return loss * box.lam + F.cross_entropy(logits, partner) * (1.0 - box.lam)


__all__ = ["CutMixBox", "apply_cutmix", "cutmix_loss", "sample_cutmix"]
