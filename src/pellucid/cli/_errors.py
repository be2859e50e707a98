"""User errors of the command line: one type, one line, exit code 2.

A command raises :class:`UsageError` (or lets a ``ValueError``/``TypeError`` from pellucid's
validation through); :func:`pellucid.cli._main.main` prints it as one line
``pellucid COMMAND: error: MESSAGE`` and returns 2. :func:`flag` ties an error raised
inside its block to the flag whose value caused it, so the line names the flag.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["USER_ERRORS", "UsageError", "flag", "one_line"]


class UsageError(ValueError):
    """A bad command-line value; the message names the flag, the value and the fix."""


# What counts as the user's fault. pellucid's validation raises TypeError for types and
# ValueError for values (ConfigError, UsageError and UnsupportedOperationError subclass
# ValueError); the file errors are a missing, unreadable or misplaced path the user gave.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def one_line(message: str) -> str:
    """``message`` with every run of whitespace (newlines included) as one space."""
    return re.sub(r"\s+", " ", message).strip()


@contextmanager
def flag(name: str, value: object) -> Iterator[None]:
    """Turn a user error raised in the block into a :class:`UsageError` naming ``name``.

    Example:
        >>> try:
        ...     with flag("--n", "x"):
        ...         int("x")
        ... except UsageError as exc:
        ...     print(exc)
        `--n x`: invalid literal for int() with base 10: 'x'
    """
    try:
        yield
    except UsageError:
        raise
    except USER_ERRORS as exc:
        text = one_line(str(exc) or type(exc).__name__)
        raise UsageError(f"`{name} {value}`: {text}") from exc
