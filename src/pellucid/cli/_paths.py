"""Where the command writes: the cache folder and output-file checks.

The cache holds models the CLI trains for itself (``pellucid explain`` without
``--study-dir``). It is, first found: ``--cache-dir DIR``, the ``PELLUCID_CACHE_DIR``
environment variable, ``$XDG_CACHE_HOME/pellucid``, ``~/.cache/pellucid``.
"""

from __future__ import annotations

import os
from pathlib import Path

from pellucid.cli._errors import UsageError

__all__ = ["CACHE_ENV", "cache_dir", "output_file"]

#: The environment variable naming the cache folder.
CACHE_ENV = "PELLUCID_CACHE_DIR"


def cache_dir(value: str | None = None) -> Path:
    """The cache folder: ``value`` (from ``--cache-dir``), else ``$PELLUCID_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/pellucid``, else ``~/.cache/pellucid``; refused if it is a file.

    Example:
        >>> cache_dir("/tmp/pellucid-cache").name
        'pellucid-cache'
    """
    if value:
        where, path = "--cache-dir", Path(value)
    elif os.environ.get(CACHE_ENV):
        where, path = CACHE_ENV, Path(os.environ[CACHE_ENV])
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        where, path = "the default cache folder", Path(base) / "pellucid"
    path = path.expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(
            f"`{where}` must be a folder; {str(path)!r} is a file. Pass --cache-dir DIR or "
            f"set {CACHE_ENV}."
        )
    return path


def output_file(flag: str, value: str) -> Path:
    """``value`` as an output file path: refused if it is a folder or its folder is missing.

    Example:
        >>> output_file("--out", "/tmp/x.png").name
        'x.png'
    """
    path = Path(value).expanduser()
    if path.is_dir():
        raise UsageError(f"`{flag}` must be a file path; {str(path)!r} is a directory.")
    if not path.parent.is_dir():
        raise UsageError(
            f"`{flag}` must be in an existing folder; {str(path.parent)!r} does not exist. "
            "Create it first."
        )
    return path
