"""The ``pellucid`` command.

``pellucid study`` runs the trade-off study on embedded data and writes ``report/index.html``;
``pellucid explain`` explains a reference model; ``pellucid diagnose`` trains under the
gradient monitor; ``pellucid stages`` lists the study's stages; ``pellucid --version``.

One module per command (``study.py``, ``explain.py``, ...) registers its subparser;
``_main.py`` assembles them and holds the one error wrapper: every user error on every
command is one line on stderr naming the flag, the value and the fix, with exit code 2 and
no traceback; an unexpected internal error still shows its traceback.
"""

from __future__ import annotations

from pellucid.cli._errors import UsageError
from pellucid.cli._main import build_parser, main

__all__ = ["UsageError", "build_parser", "main"]
