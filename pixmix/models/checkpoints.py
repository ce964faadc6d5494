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

from pixmix.models.networks import build_model
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


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Load a state dict (a plain one, or a pixmix checkpoint's) into ``model``, weights only.

    A classifier head whose shape differs (e.g. a 1000-class ImageNet model fine-tuned to fewer classes)
    is left as initialised; any other mismatch is an error.
    """
    state = load_state(path)
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        state = state["model_state"]
    if not isinstance(state, dict):
        raise PixmixError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    head = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if any(not k.startswith(("fc.", "classifier.")) for k in head):
        raise PixmixError(f"{path}: parameter shapes differ from the model's: {head[:3]}")
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    missing = [k for k in missing if k not in head]
    if missing or unexpected:
        raise PixmixError(f"{path}: does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


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
           "model_from_checkpoint", "save_checkpoint"]
