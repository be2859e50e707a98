"""``pellucid prune``: prune your model, fine-tune it on your training split, measure both."""

from __future__ import annotations

import argparse
from typing import Any

from pellucid.cli._errors import UsageError, flag
from pellucid.cli._sources import add_source_arguments, is_user_model, load_sources

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add the ``prune`` subparser to ``sub``."""
    parser = sub.add_parser(
        "prune",
        help="prune your model (channels or weights), fine-tune it, compare size and speed",
        description="Prune --model (a factory with --weights, or a reference key; exported and "
        "scripted programs cannot be pruned), fine-tune it on the training split of --data, and "
        "print parameters, MACs, measured latency and the test metric before and after. The "
        "pruned model is written to --out (safetensors; reload it with "
        "pellucid.pruning.io.load and the same factory).",
    )
    add_source_arguments(
        parser, model_help="factory pkg.mod:fn (with --weights) or a reference key"
    )
    how = parser.add_mutually_exclusive_group()
    how.add_argument(
        "--structured",
        type=float,
        default=None,
        metavar="FRACTION",
        help="fraction of channels removed (the model gets smaller and faster)",
    )
    how.add_argument(
        "--unstructured",
        type=float,
        default=None,
        metavar="FRACTION",
        help="fraction of weights zeroed (masks)",
    )
    parser.add_argument("--finetune-epochs", type=int, default=3, help="fine-tuning epochs")
    parser.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    parser.add_argument("--batch-size", type=int, default=64, help="fine-tuning batch size")
    parser.add_argument("--latency-batch", type=int, default=32, help="rows per timed forward")
    parser.add_argument("--seed", type=int, default=0, help="seed (split, fine-tuning)")
    parser.add_argument("--study-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="pruned.safetensors", help="output file")
    parser.set_defaults(run=run)


def _check(args: argparse.Namespace) -> tuple[str, float]:
    kind = "structured" if args.unstructured is None else "unstructured"
    amount = args.structured if kind == "structured" else args.unstructured
    if amount is None:
        raise UsageError("give `--structured FRACTION` (channels) or `--unstructured FRACTION`.")
    if not 0.0 < amount < 1.0:
        raise UsageError(f"`--{kind}` must be a fraction in (0, 1); got {amount}.")
    for name in ("finetune_epochs", "batch_size", "latency_batch"):
        if getattr(args, name) < 1:
            raise UsageError(
                f"`--{name.replace('_', '-')}` must be >= 1; got {getattr(args, name)}."
            )
    if not args.lr > 0:
        raise UsageError(f"`--lr` must be > 0; got {args.lr}.")
    if not args.out.endswith(".safetensors"):
        raise UsageError(f"`--out` must name a .safetensors file; got {args.out!r}.")
    return kind, float(amount)


def run(args: argparse.Namespace) -> int:
    """Prune, fine-tune, measure and save; print one table.

    Raises:
        UsageError: a flag is out of range, or `--model` is a fixed program
            (.pt2/TorchScript) that cannot be pruned.
    """
    from pellucid.pruning import prune_and_finetune
    from pellucid.pruning.io import save
    from pellucid.pruning.measure import compare
    from pellucid.training import evaluate

    kind, amount = _check(args)
    if is_user_model(args):
        from pellucid.cli._sources import model_spec

        if not model_spec(args).is_factory:
            raise UsageError(
                f"`--model` {args.model!r} is a .pt2/TorchScript program, which cannot be "
                "pruned (its graph is fixed); give the factory 'package.module:function' "
                "and --weights."
            )
        model, ds = load_sources(args, weights_needed=True)
    else:
        from pellucid.cli.explain import _reference

        model, ds, _, _ = _reference(args)
    loss = "cross_entropy" if ds.task == "classification" else "mse"
    before = evaluate(model, ds.test)
    with flag(f"--{kind}", amount):
        result = prune_and_finetune(
            model,
            ds,
            kind=kind,
            amount=amount,
            epochs=args.finetune_epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            loss=loss,
        )
    after = result.metrics or evaluate(result.model, ds.test)
    sizes = compare(model, result.model, ds.X_test[:1], batch_size=args.latency_batch, n_repeats=15)
    metric = "accuracy" if "accuracy" in before else "loss"
    rows = [
        ("parameters", sizes["dense"]["parameters"], sizes["pruned"]["parameters"], "d"),
        ("non-zero weights", sizes["dense"]["nonzeros"], sizes["pruned"]["nonzeros"], "d"),
        ("MACs / example", sizes["dense"]["macs"], sizes["pruned"]["macs"], "d"),
        (
            f"latency (ms, batch {args.latency_batch})",
            1e3 * sizes["dense"]["latency_s"],
            1e3 * sizes["pruned"]["latency_s"],
            ".3f",
        ),
        (f"test {metric}", before[metric], after[metric], ".4f"),
    ]
    print(f"{kind} pruning {amount:g} of {args.model}, {args.finetune_epochs} fine-tuning epochs")
    print(f"{'':28}{'before':>14}{'after':>14}")
    for label, old, new, fmt in rows:
        print(f"{label:28}{old:>14{fmt}}{new:>14{fmt}}")
    print(f"measured speed-up: {sizes['speedup']:.2f}x")
    path = save(result.model, args.out, metadata={"kind": kind, "amount": str(amount)})
    print(f"pruned model: {path}")
    return 0
