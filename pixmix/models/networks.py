"""The networks of the paper's recipes, and any torchvision or timm classification model, built by name.

- ``wrn40_4``: Wide ResNet 40-4 (Zagoruyko & Komodakis) for 32 px CIFAR, dropout 0.3 inside blocks;
- ``wrn16_4``: the same family at depth 16 (2.7M parameters): the CPU-friendly ``small`` preset's network;
- ``resnet50``: torchvision's ResNet-50 (224 px ImageNet), optionally from a local state dict;
- ``smoke``: a tiny CNN for tests and CPU smoke runs;
- any name of ``torchvision.models.list_models(module=torchvision.models)`` (e.g. ``resnet18``), randomly
  initialised (pretrained weights come from a local file, ``--pretrained``);
- ``timm:NAME`` (or a plain timm name that is neither of the above) when timm is installed
  (``pip install 'pixmix-data[timm]'``).
"""

from __future__ import annotations

import difflib
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


# The project's own names (resnet50 is torchvision's, listed here as the imagenet preset's network).
ARCHS = ("wrn40_4", "wrn16_4", "resnet50", "smoke")
TIMM_PREFIX = "timm:"
_WRN_DEPTHS = {"wrn40_4": 40, "wrn16_4": 16}
# torchvision builders whose defaults add auxiliary heads (their training forward would return a tuple) and
# warn about a changing initialisation: one plain logits output, the current initialisation.
_TORCHVISION_EXTRA: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
LIST_HINT = "`pixmix train --list-archs` lists the choices"


def torchvision_archs() -> list[str]:
    """torchvision's classification model names (``list_models(module=torchvision.models)``), sorted."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _timm() -> Any | None:
    """The timm module, or None when it is not installed."""
    try:
        import timm
    except ImportError:
        return None
    return timm


def _timm_missing(arch: str) -> PixmixError:
    return PixmixError(f"--arch {arch} needs timm, which is not installed: pip install 'pixmix-data[timm]'",
                       param="arch")


def arch_source(arch: str) -> str:
    """Where ``arch`` comes from: ``"own"``, ``"torchvision"`` or ``"timm"``; a one-line PixmixError if nowhere."""
    if not isinstance(arch, str) or not arch:
        raise PixmixError(f"--arch must be a model name, got {arch!r}; {LIST_HINT}", param="arch")
    if arch in ARCHS:
        return "own"
    if arch.startswith(TIMM_PREFIX):
        timm = _timm()
        if timm is None:
            raise _timm_missing(arch)
        if not timm.is_model(arch.removeprefix(TIMM_PREFIX)):
            raise PixmixError(f"--arch: timm has no model {arch.removeprefix(TIMM_PREFIX)!r}; {LIST_HINT}",
                              param="arch")
        return "timm"
    if arch in torchvision_archs():
        return "torchvision"
    timm = _timm()
    if timm is not None and timm.is_model(arch):
        return "timm"
    close = difflib.get_close_matches(arch, [*ARCHS, *torchvision_archs()], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    extra = "" if timm is not None else "; timm's models need pip install 'pixmix-data[timm]'"
    raise PixmixError(f"--arch: unknown model {arch!r}{hint}; {LIST_HINT}{extra}", param="arch")


def arch_choices() -> dict[str, list[str]]:
    """The names ``--arch`` takes, by source (timm's only when it is installed)."""
    choices = {"own": list(ARCHS), "torchvision": torchvision_archs()}
    timm = _timm()
    if timm is not None:
        choices["timm"] = [TIMM_PREFIX + name for name in timm.list_models()]
    return choices


def build_model(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """A freshly initialised network (initialisation draws from torch's global RNG: seed it first).

    ``kwargs``: ``dropout`` (the WRNs), ``width`` (smoke); other archs take none.
    """
    source = arch_source(arch)
    if source == "timm":
        timm = _timm()
        if timm is None:  # arch_source checked; kept for the type checker
            raise _timm_missing(arch)
        return timm.create_model(arch.removeprefix(TIMM_PREFIX), pretrained=False, num_classes=num_classes)
    if arch in _WRN_DEPTHS:
        return WideResNet(_WRN_DEPTHS[arch], 4, num_classes, dropout=float(kwargs.get("dropout", 0.3)))
    if arch == "smoke":
        return SmokeNet(num_classes, width=int(kwargs.get("width", 16)))
    import torchvision

    # resnet50 (own) is torchvision's too.
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes,
                                        **_TORCHVISION_EXTRA.get(arch, {}))


def classifier_prefix(model: nn.Module) -> str | None:
    """The state-dict prefix of ``model``'s classification head (its last Linear layer, else its last Conv2d:
    SqueezeNet), e.g. ``"fc."``; None when it has neither."""
    last_linear = last_conv = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_linear = name
        elif isinstance(module, nn.Conv2d):
            last_conv = name
    name = last_linear if last_linear is not None else last_conv
    return None if name is None else f"{name}."


def count_parameters(model: nn.Module) -> int:
    """The number of parameters (weights) of ``model``."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["ARCHS", "LIST_HINT", "TIMM_PREFIX", "SmokeNet", "WideResNet", "arch_choices", "arch_source", "build_model",
           "classifier_prefix", "count_parameters", "torchvision_archs"]
