"""The one base class of the errors a user can fix: bad options, bad files, bad data.

Every error the library raises for a user's mistake derives from :class:`PixmixError` (a
``ValueError``); its message names the parameter, file or URL and says what to do. The command lines
catch this base alone and print the message on one line, with the library's parameter names
translated to their flags (:func:`pixmix.cli.errors.user_errors`): any other exception is a bug of
the library and keeps its traceback.
"""

from __future__ import annotations


class PixmixError(ValueError):
    """A user-facing error: the message names the parameter (or file, URL) and what to do.

    ``param`` names the library parameter at fault (``"k"``, ``"shard_samples"``), when there is one;
    a command line shows it as its flag (``--k``, ``--shard-samples``).
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param
