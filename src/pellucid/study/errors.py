"""The study's error type, in a module of its own so that config and stages both import it.

``pellucid.study.config`` builds the configuration from the stages' defaults, and every
stage validates its own table; both raise :class:`ConfigError`. Keeping the class here (it
imports nothing from pellucid) means neither has to import the other to raise it.

Example:
    >>> issubclass(ConfigError, ValueError)
    True
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """The study configuration is unreadable or has unknown or ill-typed keys."""
