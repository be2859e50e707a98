"""The stage contract: a stage computes JSON-able results, then renders a report section.

Adding a stage is one module here plus one line in ``stages/__init__.py``: subclass
:class:`Stage`, give it a ``name``, a ``title``, its config ``defaults`` (every key a user may
set in the TOML ``[name]`` table) and ``quick`` overrides, and implement ``run`` and
``report``. ``run`` must return only JSON values (use ``pellucid._io.jsonable``); the runner
stores them atomically and hands them back to ``report`` (also on a resumed run, where
``run`` is skipped).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pellucid.report.html import Section
    from pellucid.study.context import StudyContext

__all__ = ["Stage"]


class Stage:
    """Base class of study stages.

    Attributes:
        name: config table and results file name (``results/<name>.json``).
        title: the report section's heading.
        defaults: the stage's config keys and default values.
        quick: overrides applied by ``--quick`` (a smoke run).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    quick: ClassVar[dict[str, Any]] = {}

    def validate(self, cfg: dict[str, Any]) -> None:
        """Check the values of this stage's config (types are checked already); raise
        ``pellucid.study.ConfigError`` naming the key. Runs before anything is written."""

    def run(self, ctx: StudyContext, cfg: dict[str, Any]) -> dict[str, Any]:
        """Do the work; return JSON-able results.

        Raises:
            TypeError: the subclass does not implement it.
        """
        raise TypeError(f"Stage {type(self).__name__} must implement run().")

    def report(self, ctx: StudyContext, cfg: dict[str, Any], result: dict[str, Any]) -> Section:
        """Turn stored results into a report section (figures, tables, sentences).

        Raises:
            TypeError: the subclass does not implement it.
        """
        raise TypeError(f"Stage {type(self).__name__} must implement report().")
