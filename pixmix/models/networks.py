"""The networks of the paper's recipes, built by name.

- ``wrn40_4``: Wide ResNet 40-4 (Zagoruyko & Komodakis) for 32 px CIFAR, dropout 0.3 inside blocks;
- ``resnet50``: torchvision's ResNet-50 (224 px ImageNet), optionally from a local state dict;
- ``smoke``: a tiny CNN for tests and CPU smoke runs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pixmix.utils.errors import PixmixError


class _WideBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3, 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # The projection sees the pre-activated input, as in the original WRN code.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    """WRN-``depth``-``widen`` for 32 px inputs: three groups of (depth - 4) / 6 blocks at 16k, 32k, 64k channels."""

    def __init__(self, depth: int = 40, widen: int = 4, num_classes: int = 100, dropout: float = 0.3) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise PixmixError(f"WideResNet depth must be 6n + 4 (e.g. 16, 28, 40), got {depth}", param="depth")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks = []
        for group in range(3):
            for i in range(n):
                cin = widths[group] if i == 0 else widths[group + 1]
                blocks.append(_WideBlock(cin, widths[group + 1], (1 if group == 0 else 2) if i == 0 else 1, dropout))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class SmokeNet(nn.Module):
    """A tiny CNN (two conv layers, ~5k parameters): trains an epoch of a few hundred 32 px images in seconds."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width * 2, 3, 2, 1), nn.BatchNorm2d(width * 2), nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(width * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


ARCHS = ("wrn40_4", "resnet50", "smoke")


def build_model(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """A freshly initialised network (initialisation draws from torch's global RNG: seed it first)."""
    if arch == "wrn40_4":
        return WideResNet(40, 4, num_classes, dropout=float(kwargs.get("dropout", 0.3)))
    if arch == "resnet50":
        from torchvision.models import resnet50

        return resnet50(weights=None, num_classes=num_classes)
    if arch == "smoke":
        return SmokeNet(num_classes, width=int(kwargs.get("width", 16)))
    raise PixmixError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}", param="arch")


def count_parameters(model: nn.Module) -> int:
    """The number of parameters (weights) of ``model``."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["ARCHS", "SmokeNet", "WideResNet", "build_model", "count_parameters"]
