"""Checkpoints that load with ``weights_only=True``, written atomically.

A checkpoint is a dict of tensors and plain Python values only (no pickled classes), so it loads with
``torch.load(..., weights_only=True)``: untrusted checkpoints cannot run code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixmix.models.networks import build_model, classifier_prefix
from pixmix.utils.errors import PixmixError

CHECKPOINT_FORMAT = "pixmix-checkpoint"
CHECKPOINT_VERSION = 1


def load_state(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with a one-line error naming the file."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise PixmixError(f"{path}: checkpoint not found") from exc
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PixmixError(f"{path}: not a loadable weights-only checkpoint ({first})") from exc


def pretrained_state(path: str | Path) -> dict[str, Any]:
    """The state dict inside ``path``, weights only: a plain state dict, a pixmix checkpoint's ``model_state``,
    or the ``state_dict`` of a training checkpoint (e.g. CSAILVision's ``resnet18_places365.pth.tar``), with
    DataParallel's ``module.`` prefixes removed."""
    state = load_state(path)
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        state = state["model_state"]
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PixmixError(f"{path}: expected a state dict (of tensors), got {type(state).__name__}")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def load_pretrained(model: nn.Module, path: str | Path) -> str | None:
    """Load a state dict (see :func:`pretrained_state`) into ``model``, weights only; a one-line note when its
    classification head was replaced, else None.

    A head whose class count differs (e.g. a 1000-class ImageNet model fine-tuned to fewer classes) is left
    as freshly initialised; any other mismatch is an error.
    """
    state = pretrained_state(path)
    own = model.state_dict()
    head = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    prefix = classifier_prefix(model)
    if head and (prefix is None or any(not k.startswith(prefix) for k in head)):
        raise PixmixError(f"{path}: parameter shapes differ from the model's: {head[:3]}", param="pretrained")
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    missing = [k for k in missing if k not in head]
    if missing or unexpected:
        raise PixmixError(f"{path}: does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})",
                          param="pretrained")
    if not head:
        return None
    weight = next((k for k in head if k.endswith("weight")), head[0])
    return (f"--pretrained {path}: its head {prefix}* has {state[weight].shape[0]} classes, the model "
            f"{own[weight].shape[0]}: replaced by a freshly initialised head")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write atomically: to ``path.tmp``, flushed, then renamed (an interrupted save leaves the old file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A pixmix checkpoint (weights only); one-line PixmixError if it is not one."""
    state = load_state(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise PixmixError(f"{path}: not a {CHECKPOINT_FORMAT} file (train one with `pixmix train`)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise PixmixError(f"{path}: {CHECKPOINT_FORMAT} version {state.get('version')}, expected {CHECKPOINT_VERSION}")
    return state


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The trained network of a checkpoint (eval mode, CPU) and the checkpoint's other fields."""
    state = load_checkpoint(path)
    try:
        spec = state["model"]
        model = build_model(spec["arch"], int(spec["num_classes"]), **spec.get("kwargs", {}))
        model.load_state_dict(state["model_state"])
    except PixmixError as exc:  # an unknown arch: name the file too
        raise PixmixError(f"{path}: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        # A checkpoint of the right format whose model spec or weights do not build: a damaged file.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PixmixError(f"{path}: malformed {CHECKPOINT_FORMAT} file ({type(exc).__name__}: {first})") from exc
    model.eval()
    return model, state


__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "load_checkpoint", "load_pretrained", "load_state",
           "model_from_checkpoint", "pretrained_state", "save_checkpoint"]
