"""``python -m pellucid.cli``: the same as the ``pellucid`` console script."""

from __future__ import annotations

import sys

from pellucid.cli._main import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
