"""The trade-off study: config -> stages -> results store -> report."""

from __future__ import annotations

from pellucid.study.config import build_config, read_config_file
from pellucid.study.errors import ConfigError
from pellucid.study.runner import run_study

__all__ = ["ConfigError", "build_config", "read_config_file", "run_study"]
