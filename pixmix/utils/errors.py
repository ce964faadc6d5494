"""The one base class of the errors a user can fix: bad options, bad files, bad data.

Every error the library raises for a user's mistake derives from :class:`PixmixError` (a
``ValueError``), and its message names the parameter, file or URL and says what to do. The command
lines catch this base alone and print the message in one line, translated to their flags: any other
exception is a bug of the library and keeps its traceback.
"""

from __future__ import annotations


class PixmixError(ValueError):
    """A user-facing error: the message names the parameter (or file, URL) and what to do."""
