"""``pellucid study``: run the trade-off study and write the HTML report."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add the ``study`` subparser to ``sub``."""
    parser = sub.add_parser(
        "study",
        help="train, clip, prune and explain reference models; write an HTML report",
        description="Run the trade-off study on embedded data and write OUT/report/index.html "
        "(and OUT/report/explorer.html, the interactive explorer) "
        "plus machine-readable results in OUT/results/. Finished stages are cached; a rerun "
        "resumes.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file overriding the defaults")
    parser.add_argument(
        "--out",
        metavar="DIR",
        default="pellucid-study",
        help="output directory (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run in well under a minute")
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: 0)")
    parser.add_argument(
        "--stages", default=None, help="comma-separated stages to run (default: all)"
    )
    parser.add_argument("--no-resume", action="store_true", help="recompute cached stages")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the study configured by ``args``; user errors propagate to the CLI wrapper.

    Raises:
        UsageError: `--seed` is out of range or `--stages` names no stage.
        NotADirectoryError: `--out` is an existing file.
        PermissionError: `--out` cannot be written.
    """
    from pellucid.cli._errors import UsageError
    from pellucid.study.config import MAX_SEED, build_config, read_config_file
    from pellucid.study.runner import check_out_dir, run_study

    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise UsageError(f"`--seed` must be an integer >= 0 and <= {MAX_SEED}; got {args.seed}.")
    check_out_dir(args.out)
    user = read_config_file(args.config) if args.config else None
    stages = None
    if args.stages is not None:
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        if not stages:
            raise UsageError(
                f"`--stages` must name at least one stage, comma-separated (e.g. "
                f"training,pruning); got {args.stages!r}. Leave it out to run them all."
            )
    config = build_config(user, quick=args.quick, seed=args.seed, stages=stages)
    report = run_study(
        config, args.out, resume=not args.no_resume, progress=False if args.quiet else True
    )
    from pellucid.explorer import write_static_page

    explorer = write_static_page(args.out)
    print(f"report: {report}")
    print(f"explorer: {explorer}")
    return 0
