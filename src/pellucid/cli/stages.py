"""``pellucid stages``: list the study's stages and their config keys."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add the ``stages`` subparser to ``sub``."""
    parser = sub.add_parser("stages", help="list the study's stages and their config keys")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print each stage's name, title and default config keys."""
    from pellucid.study.stages import STAGES

    for name, stage in STAGES.items():
        keys = ", ".join(f"{k}={v!r}" for k, v in stage.defaults.items())
        print(f"[{name}]  {stage.title}\n    {keys}")
    return 0
