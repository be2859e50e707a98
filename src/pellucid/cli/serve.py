"""``pellucid serve DIR``: the explorer of a study folder or of explanation files."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add the ``serve`` subparser to ``sub``."""
    parser = sub.add_parser(
        "serve",
        help="browse a study's or explanation files' examples, methods and variants",
        description="Serve the explorer of DIR (a study folder, or a folder of explanation "
        "files written by `pellucid explain` / Explanation.save) on http://127.0.0.1:PORT/. "
        "Read-only, loopback only; Ctrl+C stops it.",
    )
    parser.add_argument("dir", metavar="DIR", help="study folder or folder of explanations")
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port (default: a free one, printed)"
    )
    parser.add_argument("--open", action="store_true", help="open the page in a browser")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; a bad DIR or port is a one-line error (exit 2).

    Raises:
        UsageError: `--port` is outside [0, 65535] or cannot be listened on, or `DIR` is
            not a directory.
    """
    from pathlib import Path

    from pellucid.cli._errors import UsageError

    if not 0 <= args.port <= 65535:
        raise UsageError(f"`--port` must be an integer in [0, 65535]; got {args.port}.")
    if not Path(args.dir).is_dir():
        raise UsageError(f"`DIR` must be an existing directory; got {args.dir!r}.")
    from pellucid.explorer import serve

    try:
        serve(args.dir, port=args.port, open_browser=args.open)
    except OSError as exc:  # port taken or not allowed
        raise UsageError(f"`--port {args.port}`: cannot listen on 127.0.0.1: {exc}") from exc
    return 0
