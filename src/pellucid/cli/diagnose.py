"""``pellucid diagnose``: train under the gradient monitor and print its diagnosis."""

from __future__ import annotations

import argparse
from typing import Any

from pellucid.cli._errors import UsageError, flag
from pellucid.cli._sources import add_source_arguments, is_user_model, model_spec

__all__ = ["register", "run"]

OPTIMIZERS = ("adam", "adamw", "sgd")

MODELS = ("MLP", "DeepPlainNet", "SmallCNN", "TinyResNet")


def register(sub: Any) -> None:
    """Add the ``diagnose`` subparser to ``sub``."""
    parser = sub.add_parser(
        "diagnose",
        help="train a model with the gradient monitor and say which layer exploded or vanished",
        description="Train a model with pellucid's GradientMonitor (and optionally a "
        "clipper), then print the monitor's diagnosis. Your model: --model "
        "package.module:function (optionally --weights as the starting point) with --data. "
        "The default is the classic failure on embedded digits: a deep plain ReLU net with a "
        "large init and SGD at lr 0.1.",
    )
    parser.add_argument("--dataset", default="digits", help="embedded dataset")
    parser.add_argument(
        "--model", default="DeepPlainNet", help="factory pkg.mod:fn, or " + ", ".join(MODELS)
    )
    parser.add_argument("--depth", type=int, default=12, help="DeepPlainNet depth")
    parser.add_argument("--init-scale", type=float, default=1.7, help="DeepPlainNet init")
    parser.add_argument("--activation", default="relu", help="DeepPlainNet/MLP activation")
    parser.add_argument("--optimizer", default="sgd", help="adam, adamw or sgd")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate")
    parser.add_argument("--epochs", type=int, default=2, help="epochs")
    parser.add_argument(
        "--clip",
        default="none",
        help="none, norm:MAX, value:V, agc:FACTOR, autoclip, zclip, or a weight constraint "
        "applied after each step: weight:C (clip to [-C, C]) or maxnorm:M",
    )
    parser.add_argument(
        "--nonfinite",
        choices=("propagate", "raise", "skip", "zero"),
        default="propagate",
        help="what a step with NaN/inf gradients does: propagate (as torch; default), raise "
        "(stop training), skip (drop the step) or zero (zero those gradients)",
    )
    parser.add_argument("--log-every", type=int, default=5, help="monitor sampling period")
    parser.add_argument("--seed", type=int, default=0, help="seed")
    parser.add_argument("--out", default=None, help="write the monitor history (JSON or CSV)")
    add_source_arguments(parser, model_help=None)
    parser.set_defaults(run=run)


def clipper(spec: str, nonfinite: str = "propagate") -> object:
    """The clipper a ``--clip`` spec names (with the ``--nonfinite`` policy), or None for
    ``--clip none`` with ``--nonfinite propagate``."""
    from pellucid import clipping
    from pellucid._validation import did_you_mean

    name, _, value = spec.partition(":")
    makers = {
        "none": lambda v: None,
        "norm": lambda v: clipping.clip_by_global_norm(float(v or 1.0)),
        "value": lambda v: clipping.clip_by_value(float(v or 0.5)),
        "agc": lambda v: clipping.adaptive_clip(float(v or 0.01)),
        "autoclip": lambda v: clipping.AutoClip(),
        "zclip": lambda v: clipping.ZClip(),
        "weight": lambda v: clipping.weight_clip(float(v or 0.1)),
        "maxnorm": lambda v: clipping.max_norm(float(v or 2.0)),
    }
    if name not in makers:
        raise UsageError(
            "`--clip` must be one of none, norm:MAX, value:V, agc:FACTOR, autoclip, zclip, "
            f"weight:C, maxnorm:M; "
            f"got {spec!r}." + did_you_mean(name, makers)
        )
    try:
        transform = makers[name](value)
    except ValueError as exc:
        raise UsageError(f"`--clip` {spec!r}: {exc}") from exc
    if isinstance(transform, clipping.WeightConstraint):
        policy = "skip" if nonfinite == "propagate" else nonfinite
        return clipping.WeightClipper(transform, nonfinite=policy)
    if transform is None and nonfinite == "propagate":
        return None
    return clipping.GradientClipper(transform, nonfinite=nonfinite)


def _model_kwargs(args: argparse.Namespace, ds: Any) -> dict[str, object]:
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
            raise UsageError(f"`--model {args.model}` needs image data; use --dataset digits.")
        kwargs.update(in_channels=ds.input_shape[0])
    else:
        raise UsageError(
            f"`--model` must be MLP, DeepPlainNet, SmallCNN or TinyResNet; got {args.model!r}."
        )
    return kwargs


def _user_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """Your factory (its initial weights from ``--seed``, or ``--weights``) and data."""
    import torch

    from pellucid.cli._errors import flag
    from pellucid.cli._sources import data_spec
    from pellucid.sources import load_data

    spec = model_spec(args)
    if not spec.is_factory:
        raise UsageError(
            f"`--model` {args.model!r} is a file; diagnose trains the model, which needs a "
            "factory 'package.module:function'."
        )
    with flag("--data", args.data):
        ds = load_data(data_spec(args))
    with flag("--model", args.model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = spec.load().train()
    return model, ds


def _check_numbers(args: argparse.Namespace) -> None:
    from pellucid._validation import did_you_mean

    for name in ("epochs", "log_every", "depth"):
        value = getattr(args, name)
        if value < 1:
            raise UsageError(f"`--{name.replace('_', '-')}` must be an integer >= 1; got {value}.")
    if not args.lr > 0:
        raise UsageError(f"`--lr` must be a number > 0; got {args.lr}.")
    if not args.init_scale > 0:
        raise UsageError(f"`--init-scale` must be a number > 0; got {args.init_scale}.")
    if args.seed < 0:
        raise UsageError(f"`--seed` must be an integer >= 0; got {args.seed}.")
    if args.optimizer not in OPTIMIZERS:
        raise UsageError(
            f"`--optimizer` must be one of {', '.join(OPTIMIZERS)}; got {args.optimizer!r}."
            + did_you_mean(args.optimizer, OPTIMIZERS)
        )


def run(args: argparse.Namespace) -> int:
    """Train as ``args`` say under a ``GradientMonitor``; print the findings.

    Raises:
        UsageError: a number flag is out of range or `--out` cannot be written.
    """
    from pellucid.clipping import NonFiniteGradientError
    from pellucid.data import load_dataset
    from pellucid.models import build_model
    from pellucid.monitoring import GradientMonitor
    from pellucid.training import evaluate, fit

    _check_numbers(args)
    if args.out:  # refused before training, not after
        from pellucid.cli._paths import output_file

        output_file("--out", args.out)
    if is_user_model(args):
        model, ds = _user_model(args)
        name, where = args.model, ds.source
    else:
        with flag("--dataset", args.dataset):
            ds = load_dataset(args.dataset, seed=args.seed)
        model = build_model(args.model, seed=args.seed, **_model_kwargs(args, ds))
        name, where = args.model, args.dataset
    clip = clipper(args.clip, args.nonfinite)
    monitor = GradientMonitor(log_every=args.log_every)
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
            clipper=clip,  # type: ignore[arg-type]
            progress=None,
        )
    except NonFiniteGradientError as exc:  # --nonfinite raise: stop, then diagnose
        print(f"training stopped (--nonfinite raise): {exc}")
        status = 1
    else:
        result = evaluate(model, ds.test)
        print(
            f"{name} on {where}: {len(history.step_losses)} steps, "
            f"{history.skipped_steps} skipped; test "
            + ", ".join(f"{k} {v:.4f}" for k, v in result.items())
        )
        status = 0
    findings = monitor.diagnose()
    if not findings:
        print("diagnosis: no exploding, vanishing or dead-unit findings.")
    for finding in findings:
        print(f"- [{finding.kind}] {finding.message}")
    if args.out:
        path = monitor.to_csv(args.out) if args.out.endswith(".csv") else monitor.to_json(args.out)
        print(f"monitor history: {path}")
    return status
