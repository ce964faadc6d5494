"""The one error type of ``mixset shard``: a problem with the options, the dataset or the output folder."""

from __future__ import annotations

from pixmix.utils.errors import PixmixError


class ShardError(PixmixError):
    """A problem with the options, the dataset or the output folder, explained in one line."""


__all__ = ["ShardError"]
