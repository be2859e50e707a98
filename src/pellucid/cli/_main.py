"""Parser assembly and the one error wrapper of the ``pellucid`` command.

Each command lives in its own module of this package and exposes ``register(subparsers)``,
which adds its subparser and sets ``run=`` (a function ``Namespace -> int``) as a default.
To add a command, write its module and add its name to :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from pellucid.cli._errors import USER_ERRORS, UsageError, one_line

__all__ = ["COMMANDS", "build_parser", "main"]

# One module per command, in the order ``pellucid --help`` lists them.
COMMANDS: tuple[str, ...] = (
    "study",
    "explain",
    "diagnose",
    "prune",
    "stages",
    "show",
    "serve",
)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are :class:`UsageError` (one line, exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{one_line(message)} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The ``pellucid`` parser with every command of :data:`COMMANDS` registered."""
    from pellucid import __version__

    parser = _Parser(
        prog="pellucid",
        description="A PyTorch-native workbench for understanding neural networks.",
    )
    parser.add_argument("--version", action="version", version=f"pellucid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"pellucid.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pellucid`` console script; returns the exit code.

    A user error (a bad flag value, a missing file, a method that does not apply to the
    model) is one line ``pellucid COMMAND: error: MESSAGE`` on stderr and exit code 2, with
    no traceback; any other exception is a bug and propagates with its traceback. Set
    ``PELLUCID_DEBUG=1`` to see the traceback of user errors too.
    """
    parser = build_parser()
    prog = "pellucid"
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        prog = f"pellucid {args.command}"
        return int(args.run(args))
    except USER_ERRORS as exc:
        if os.environ.get("PELLUCID_DEBUG"):
            raise
        print(f"{prog}: error: {one_line(str(exc)) or type(exc).__name__}", file=sys.stderr)
        return 2
