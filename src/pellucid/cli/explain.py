"""``pellucid explain``: explain a reference model on its embedded test data."""

from __future__ import annotations

import argparse
import os
from typing import Any

from pellucid.cli._errors import UsageError, flag

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add the ``explain`` subparser to ``sub``."""
    parser = sub.add_parser(
        "explain",
        help="explain a reference model on its embedded test data",
        description="Train (or reuse from a study folder) a reference model and explain its "
        "first N test examples; writes an Explanation file (safetensors). Under torchrun the "
        "rows are sharded across ranks and merged.",
    )
    parser.add_argument(
        "--model",
        default="digits/SmallCNN",
        help="reference model key, e.g. digits/SmallCNN, breast_cancer/MLP",
    )
    parser.add_argument("--method", default="integrated_gradients", help="attribution method")
    parser.add_argument("--n", type=int, default=16, help="number of test examples")
    parser.add_argument(
        "--target", default="predicted", help="'predicted' or a class index (default: predicted)"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument(
        "--study-dir", default="pellucid-study", help="reuse trained weights from this study folder"
    )
    parser.add_argument("--out", default="explanation.safetensors", help="output file")
    parser.add_argument("--quick", action="store_true", help="train briefly (smoke run)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Explain the first ``--n`` test rows of ``--model`` with ``--method``; save the result."""
    from pathlib import Path

    import torch.distributed as dist

    from pellucid._registry import get_method
    from pellucid.sharded import explain_sharded
    from pellucid.study.context import StudyContext

    with flag("--method", args.method):
        get_method(args.method)
    if args.n < 1:
        raise UsageError(f"`--n` must be an integer >= 1; got {args.n}.")
    if args.seed < 0:
        raise UsageError(f"`--seed` must be an integer >= 0; got {args.seed}.")
    target: int | str = int(args.target) if args.target.lstrip("-").isdigit() else args.target
    if target != "predicted" and not isinstance(target, int):
        raise UsageError(f"`--target` must be 'predicted' or a class index; got {args.target!r}.")
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"`--out` must be a file path; {str(out)!r} is a directory.")
    study_dir = Path(args.study_dir)
    if study_dir.exists() and not study_dir.is_dir():
        raise UsageError(f"`--study-dir` must be a directory; got the file {str(study_dir)!r}.")
    ctx = StudyContext(out_dir=study_dir, seeds=[args.seed], quick=args.quick, progress=True)
    with flag("--model", args.model):
        ctx.spec(args.model)
    if dist.is_available() and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("gloo")
    model, ds, record = ctx.trained(args.model, args.seed)
    x = ds.X_test[: args.n]
    with flag("--method", args.method):
        explanation = explain_sharded(model, x, method=args.method, target=target)
    if not dist.is_initialized() or dist.get_rank() == 0:
        explanation.save(out)
        metrics = ", ".join(f"test {k} {v:.4f}" for k, v in record["test"].items())
        print(f"{args.method} on {args.model} ({len(explanation)} examples; {metrics}): {out}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0
