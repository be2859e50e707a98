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

    explain = sub.add_parser(
        "explain",
        help="explain a reference model on its embedded test data",
        description="Train (or reuse from a study folder) a reference model and explain its "
        "first N test examples; writes an Explanation file (safetensors). Under torchrun the "
        "rows are sharded across ranks and merged.",
    )
    explain.add_argument(
        "--model",
        default="digits/SmallCNN",
        help="reference model key, e.g. digits/SmallCNN, breast_cancer/MLP",
    )
    explain.add_argument("--method", default="integrated_gradients", help="attribution method")
    explain.add_argument("--n", type=int, default=16, help="number of test examples")
    explain.add_argument(
        "--target", default="predicted", help="'predicted' or a class index (default: predicted)"
    )
    explain.add_argument("--seed", type=int, default=0, help="training seed")
    explain.add_argument(
        "--study-dir", default="pellucid-study", help="reuse trained weights from this study folder"
    )
    explain.add_argument("--out", default="explanation.safetensors", help="output file")
    explain.add_argument("--quick", action="store_true", help="train briefly (smoke run)")

    diagnose = sub.add_parser(
        "diagnose",
        help="train a model with the gradient monitor and say which layer exploded or vanished",
        description="Train a model on an embedded dataset with pellucid's GradientMonitor "
        "(and optionally a clipper), then print the monitor's diagnosis. The default is the "
        "classic failure: a deep plain ReLU net with a large init and SGD at lr 0.1.",
    )
    diagnose.add_argument("--dataset", default="digits", help="embedded dataset")
    diagnose.add_argument(
        "--model", default="DeepPlainNet", help="MLP, DeepPlainNet, SmallCNN or TinyResNet"
    )
    diagnose.add_argument("--depth", type=int, default=12, help="DeepPlainNet depth")
    diagnose.add_argument("--init-scale", type=float, default=1.7, help="DeepPlainNet init")
    diagnose.add_argument("--activation", default="relu", help="DeepPlainNet/MLP activation")
    diagnose.add_argument("--optimizer", default="sgd", help="adam, adamw or sgd")
    diagnose.add_argument("--lr", type=float, default=0.1, help="learning rate")
    diagnose.add_argument("--epochs", type=int, default=2, help="epochs")
    diagnose.add_argument(
        "--clip", default="none", help="none, norm:MAX, value:V, agc:FACTOR, autoclip or zclip"
    )
    diagnose.add_argument("--log-every", type=int, default=5, help="monitor sampling period")
    diagnose.add_argument("--seed", type=int, default=0, help="seed")
    diagnose.add_argument("--out", default=None, help="write the monitor history (JSON or CSV)")

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
    if args.command == "explain":
        return _explain(args)
    if args.command == "diagnose":
        return _diagnose(args)
    return _study(args)


def _clipper(spec: str) -> object:
    from pellucid import clipping

    name, _, value = spec.partition(":")
    makers = {
        "none": lambda v: None,
        "norm": lambda v: clipping.clip_by_global_norm(float(v or 1.0)),
        "value": lambda v: clipping.clip_by_value(float(v or 0.5)),
        "agc": lambda v: clipping.adaptive_clip(float(v or 0.01)),
        "autoclip": lambda v: clipping.AutoClip(),
        "zclip": lambda v: clipping.ZClip(),
    }
    if name not in makers:
        from pellucid._validation import did_you_mean

        raise ValueError(
            f"`--clip` must be one of none, norm:MAX, value:V, agc:FACTOR, autoclip, zclip; "
            f"got {spec!r}." + did_you_mean(name, makers)
        )
    try:
        transform = makers[name](value)
    except ValueError as exc:
        raise ValueError(f"`--clip` {spec!r}: {exc}") from exc
    return None if transform is None else clipping.GradientClipper(transform)


def _diagnose(args: argparse.Namespace) -> int:
    from pellucid.data import load_dataset
    from pellucid.models import build_model
    from pellucid.monitoring import GradientMonitor
    from pellucid.training import evaluate, fit

    try:
        ds = load_dataset(args.dataset, seed=args.seed)
        kwargs: dict[str, object] = {"n_classes": ds.n_classes}
        flat = 1
        for size in ds.input_shape:
            flat *= size
        if args.model == "DeepPlainNet":
            kwargs.update(
                in_features=flat,
                depth=args.depth,
                init_scale=args.init_scale,
                activation=args.activation,
            )
        elif args.model == "MLP":
            kwargs.update(in_features=flat, activation=args.activation)
        elif args.model in ("SmallCNN", "TinyResNet"):
            if len(ds.input_shape) != 3:
                raise ValueError(f"`--model {args.model}` needs image data; use --dataset digits.")
            kwargs.update(in_channels=ds.input_shape[0])
        else:
            raise ValueError(
                f"`--model` must be MLP, DeepPlainNet, SmallCNN or TinyResNet; got {args.model!r}."
            )
        model = build_model(args.model, seed=args.seed, **kwargs)
        clipper = _clipper(args.clip)
        monitor = GradientMonitor(log_every=args.log_every)
    except (ValueError, TypeError) as exc:
        return _fail(str(exc))
    loss = "cross_entropy" if ds.task == "classification" else "mse"
    try:
        history = fit(
            model,
            ds.train,
            epochs=args.epochs,
            optimizer=args.optimizer,
            lr=args.lr,
            loss=loss,
            seed=args.seed,
            monitor=monitor,
            clipper=clipper,  # type: ignore[arg-type]
            progress=None,
        )
    except ValueError as exc:
        return _fail(str(exc))
    result = evaluate(model, ds.test)
    print(
        f"{args.model} on {args.dataset}: {len(history.step_losses)} steps, "
        f"{history.skipped_steps} skipped; test "
        + ", ".join(f"{k} {v:.4f}" for k, v in result.items())
    )
    findings = monitor.diagnose()
    if not findings:
        print("diagnosis: no exploding, vanishing or dead-unit findings.")
    for finding in findings:
        print(f"- [{finding.kind}] {finding.message}")
    if args.out:
        path = monitor.to_csv(args.out) if args.out.endswith(".csv") else monitor.to_json(args.out)
        print(f"monitor history: {path}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch.distributed as dist

    from pellucid._registry import get_method
    from pellucid.sharded import explain_sharded
    from pellucid.study.context import StudyContext

    try:
        get_method(args.method)
        if args.n < 1:
            raise ValueError(f"`--n` must be an integer >= 1; got {args.n}.")
        if args.seed < 0:
            raise ValueError(f"`--seed` must be an integer >= 0; got {args.seed}.")
        target: int | str = int(args.target) if args.target.lstrip("-").isdigit() else args.target
        if target != "predicted" and not isinstance(target, int):
            raise ValueError(
                f"`--target` must be 'predicted' or a class index; got {args.target!r}."
            )
        out = Path(args.out)
        if out.is_dir():
            raise ValueError(f"`--out` must be a file path; {str(out)!r} is a directory.")
        study_dir = Path(args.study_dir)
        if study_dir.exists() and not study_dir.is_dir():
            raise ValueError(f"`--study-dir` must be a directory; got the file {str(study_dir)!r}.")
        ctx = StudyContext(out_dir=study_dir, seeds=[args.seed], quick=args.quick, progress=True)
        ctx.spec(args.model)
    except ValueError as exc:
        return _fail(str(exc))
    if (
        dist.is_available()
        and "WORLD_SIZE" in __import__("os").environ
        and not dist.is_initialized()
    ):
        dist.init_process_group("gloo")
    model, ds, record = ctx.trained(args.model, args.seed)
    x = ds.X_test[: args.n]
    explanation = explain_sharded(model, x, method=args.method, target=target)
    if not dist.is_initialized() or dist.get_rank() == 0:
        explanation.save(out)
        metrics = ", ".join(f"test {k} {v:.4f}" for k, v in record["test"].items())
        print(f"{args.method} on {args.model} ({len(explanation)} examples; {metrics}): {out}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


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
