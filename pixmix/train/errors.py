"""The training subsystem's user error (its own module, so every training module can raise it)."""

from __future__ import annotations

from pixmix.utils.errors import PixmixError


class TrainError(PixmixError):
    """A problem with the training options, the data or the output folder, explained in one line."""


__all__ = ["TrainError"]
