"""How the command lines show a user's mistake: one line, with the library's names as flags.

Only :class:`~pixmix.utils.errors.PixmixError` is caught: anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import click

from pixmix.utils.errors import PixmixError


def flag(param: str, flags: Mapping[str, str] | None = None) -> str:
    """The flag of a library parameter: ``flags[param]`` or ``--`` + the name with dashes."""
    if flags and param in flags:
        return flags[param]
    return "--" + param.replace("_", "-")


def translate(exc: PixmixError, flags: Mapping[str, str] | None = None) -> str:
    """The first line of the message, with the parameter at fault shown as its flag: a message that
    starts with the parameter's name gets the flag in its place, any other gets the flag in front (a
    name further on may be part of a path, so it is left alone)."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if exc.param:
        name, shown = exc.param, flag(exc.param, flags)
        if re.match(rf"{re.escape(name)}(?![\w-])", message):
            message = shown + message[len(name):]
        elif not message.startswith(shown):
            message = f"{shown}: {message}"
    return message


@contextmanager
def user_errors(flags: Mapping[str, str] | None = None) -> Iterator[None]:
    """Turn a :class:`PixmixError` into a one-line ``click`` error (exit 1); let anything else through."""
    try:
        yield
    except PixmixError as exc:
        raise click.ClickException(translate(exc, flags)) from exc
