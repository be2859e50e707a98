"""The ``pellucid`` command.

``pellucid study`` runs the trade-off study on embedded data and writes ``report/index.html``;
``pellucid explain`` explains an embedded reference model; ``pellucid --version``.
Bad input is one clear line on stderr and exit code 2, with nothing half-written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from pellucid import __version__

    parser = argparse.ArgumentParser(
        prog="pellucid",
        description="A PyTorch-native workbench for understanding neural networks.",
    )
    parser.add_argument("--version", action="version", version=f"pellucid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    study = sub.add_parser(
        "study",
        help="train, clip, prune and explain reference models; write an HTML report",
        description="Run the trade-off study on embedded data and write OUT/report/index.html "
        "plus machine-readable results in OUT/results/. Finished stages are cached; a rerun "
        "resumes.",
    )
    study.add_argument("--config", metavar="FILE", help="TOML file overriding the defaults")
    study.add_argument(
        "--out",
        metavar="DIR",
        default="pellucid-study",
        help="output directory (default: %(default)s)",
    )
    study.add_argument("--quick", action="store_true", help="a smoke run in well under a minute")
    study.add_argument("--seed", type=int, default=None, help="first seed (default: 0)")
    study.add_argument(
        "--stages", default=None, help="comma-separated stages to run (default: all)"
    )
    study.add_argument("--no-resume", action="store_true", help="recompute cached stages")
    study.add_argument("--quiet", action="store_true", help="no progress lines")

    stages = sub.add_parser("stages", help="list the study's stages and their config keys")
    stages.set_defaults(command="stages")
    return parser


def _fail(message: str) -> int:
    print(f"pellucid: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pellucid`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "stages":
        from pellucid.study.stages import STAGES

        for name, stage in STAGES.items():
            keys = ", ".join(f"{k}={v!r}" for k, v in stage.defaults.items())
            print(f"[{name}]  {stage.title}\n    {keys}")
        return 0
    return _study(args)


def _study(args: argparse.Namespace) -> int:
    from pellucid.study.config import ConfigError, build_config, read_config_file
    from pellucid.study.runner import check_out_dir, run_study

    try:
        if args.seed is not None and args.seed < 0:
            raise ConfigError(f"`--seed` must be an integer >= 0; got {args.seed}.")
        check_out_dir(args.out)
        user = read_config_file(args.config) if args.config else None
        stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
        config = build_config(user, quick=args.quick, seed=args.seed, stages=stages)
    except (ConfigError, NotADirectoryError, ValueError) as exc:
        return _fail(str(exc))
    try:
        report = run_study(
            config, args.out, resume=not args.no_resume, progress=False if args.quiet else True
        )
    except (ConfigError, NotADirectoryError) as exc:
        return _fail(str(exc))
    print(f"report: {report}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
