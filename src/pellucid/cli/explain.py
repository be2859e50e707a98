"""``pellucid explain``: explain your model on your data, or a reference model."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from dataclasses import replace
from typing import Any

from pellucid.cli._errors import UsageError, flag
from pellucid.cli._explain_options import check_target, input_kind, method_kwargs, methods_epilog
from pellucid.cli._paths import CACHE_ENV, cache_dir, output_file
from pellucid.cli._sources import add_source_arguments, is_user_model, load_sources

__all__ = ["parse_rows", "register", "run"]


def register(sub: Any) -> None:
    """Add the ``explain`` subparser to ``sub``."""
    parser = sub.add_parser(
        "explain",
        help="explain your model on your data (or a reference model); write an Explanation",
        description="Explain rows of the test split with an attribution method and write an "
        "Explanation file (safetensors). --model is a factory 'package.module:function' "
        "(with --weights) or a .pt2/TorchScript file, and --data your data; or --model is a "
        "reference key such as breast_cancer/MLP (trained here, or reused from --study-dir). "
        f"Reference models are trained once and cached in --cache-dir (or ${CACHE_ENV}, else "
        "~/.cache/pellucid) unless --study-dir names a study folder to reuse. "
        "Under torchrun the rows are sharded across ranks and merged.",
        epilog=methods_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_arguments(
        parser,
        model_help="factory pkg.mod:fn, a .pt2/TorchScript file, or a reference key "
        "(default: digits/SmallCNN)",
    )
    parser.add_argument("--method", default="integrated_gradients", help="attribution method")
    parser.add_argument(
        "--rows", default=None, metavar="START:STOP", help="test rows to explain (default 0:16)"
    )
    parser.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)  # deprecated
    parser.add_argument(
        "--target", default="predicted", help="'predicted' or a class index (default: predicted)"
    )
    parser.add_argument("--layer", default=None, help="module name, for layer methods (grad_cam)")
    parser.add_argument("--n-samples", type=int, default=None, help="samples (sampling methods)")
    parser.add_argument(
        "--baseline", default=None, help="a number, or 'mean' (the training mean row)"
    )
    parser.add_argument(
        "--feature-mask",
        default=None,
        help="'grid', 'slic', or a .npy file of integer group ids (one example's shape)",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed / split seed")
    parser.add_argument(
        "--study-dir", default=None, help="reuse (or train into) this study folder's models"
    )
    parser.add_argument("--cache-dir", default=None, help=f"cache folder (default: ${CACHE_ENV})")
    parser.add_argument("--out", default="explanation.safetensors", help="output file")
    parser.add_argument("--plot", default=None, metavar="PNG", help="also draw the first example")
    parser.add_argument("--quick", action="store_true", help="train briefly (smoke run)")
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the model runs: cpu, cuda or cuda:N (under torchrun, cuda is each "
        "rank's LOCAL_RANK device)",
    )
    parser.set_defaults(run=run)


def parse_device(text: str) -> Any:
    """``--device``: a torch device that exists here (``cuda`` under torchrun: the rank's own).

    Raises:
        UsageError: not a device name, or a CUDA device torch cannot see.
    """
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"`--device` must be cpu, cuda or cuda:N; got {text!r}.") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UsageError(f"`--device` must be cpu, cuda or cuda:N; got {text!r}.")
    if not torch.cuda.is_available():
        raise UsageError(
            f"`--device {text}`: torch sees no CUDA device here (torch {torch.__version__}); "
            "use --device cpu, or install a CUDA build of torch."
        )
    index = device.index
    if index is None:
        index = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
    if index >= torch.cuda.device_count():
        raise UsageError(
            f"`--device {text}`: there are {torch.cuda.device_count()} CUDA devices "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})."
        )
    return torch.device("cuda", index)


def parse_rows(text: str | None, n: int | None) -> slice:
    """``--rows START:STOP`` (or ``N`` for ``0:N``; the deprecated ``--n N`` too).

    Raises:
        UsageError: `--n` and `--rows` are both given, or `--rows` is not START:STOP with
            0 <= START < STOP, nor a count.
    """
    if n is not None:
        print(
            "pellucid explain: warning: `--n` is deprecated (it collides with torchrun's "
            f"options); use `--rows 0:{n}`.",
            file=sys.stderr,
        )
        if text is not None:
            raise UsageError("`--n` and `--rows` say the same thing; give `--rows` only.")
        text = f"0:{n}"
    text = "0:16" if text is None else text
    parts = text.split(":") if ":" in text else ["0", text]
    try:
        start, stop = (int(p) for p in parts)
    except ValueError:
        raise UsageError(
            f"`--rows` must be START:STOP (e.g. 0:64) or a count; got {text!r}."
        ) from None
    if len(parts) != 2 or start < 0 or stop <= start:
        raise UsageError(f"`--rows` must be START:STOP with 0 <= START < STOP; got {text!r}.")
    return slice(start, stop)


def _target(text: str) -> int | str:
    target: int | str = int(text) if text.lstrip("-").isdigit() else text
    if target != "predicted" and not isinstance(target, int):
        raise UsageError(f"`--target` must be 'predicted' or a class index; got {text!r}.")
    return target


def _reference(args: argparse.Namespace) -> tuple[Any, Any, str, str]:
    from pathlib import Path

    from pellucid.study.context import StudyContext

    if args.seed < 0:
        raise UsageError(f"`--seed` must be an integer >= 0; got {args.seed}.")
    if args.study_dir is not None:
        home = Path(args.study_dir)
        if home.exists() and not home.is_dir():
            raise UsageError(f"`--study-dir` must be a directory; got the file {str(home)!r}.")
    else:
        home = cache_dir(getattr(args, "cache_dir", None))
    key = args.model or "digits/SmallCNN"
    ctx = StudyContext(out_dir=home, seeds=[args.seed], quick=args.quick, progress=True)
    with flag("--model", key):
        spec = ctx.spec(key)
    model, ds, record = ctx.trained(key, args.seed)
    print(f"model weights: {ctx.models_dir}", file=sys.stderr)
    metrics = ", ".join(f"test {k} {v:.4f}" for k, v in record["test"].items())
    return model, ds, metrics, spec.model


def run(args: argparse.Namespace) -> int:
    """Explain ``--rows`` of the test split with ``--method``; save (and plot) the result.

    Raises:
        UsageError: a flag is out of range or does not fit the model and data (the rows,
            the method's input kinds, the target).
    """
    from pathlib import Path

    import torch.distributed as dist

    from pellucid._registry import get_method
    from pellucid.sharded import explain_sharded

    with flag("--method", args.method):
        info = get_method(args.method)
    rows = parse_rows(args.rows, args.n)
    target = _target(args.target)
    if args.n_samples is not None and args.n_samples < 1:
        raise UsageError(f"`--n-samples` must be an integer >= 1; got {args.n_samples}.")
    device = parse_device(args.device)
    out = output_file("--out", args.out)
    if args.plot is not None and not args.plot.lower().endswith(".png"):
        raise UsageError(f"`--plot` must name a .png file; got {args.plot!r}.")
    if is_user_model(args):
        model, ds = load_sources(args, weights_needed=True)
        metrics, architecture = f"data {ds.source}", ""
    else:
        model, ds, metrics, architecture = _reference(args)
    if rows.stop > len(ds.X_test):
        flag_name = "--n" if args.n is not None else "--rows"
        raise UsageError(
            f"`{flag_name}` asks for rows {rows.start}:{rows.stop}, but there are only "
            f"{len(ds.X_test)} test rows; pass at most --rows {rows.start}:{len(ds.X_test)}."
        )
    x = ds.X_test[rows]
    kind = input_kind(architecture, x)
    if kind not in info.input_kinds:
        from pellucid._registry import list_methods

        fits = [n for n in list_methods() if kind in get_method(n).input_kinds]
        raise UsageError(
            f"`--method {info.name}` explains {' or '.join(info.input_kinds)} inputs; this "
            f"model takes {kind} inputs. Methods for {kind} inputs: {', '.join(fits)}."
        )
    check_target(target, model, x)
    kwargs: dict[str, Any] = {"target": target}
    grouped = ds.feature_mask is not None
    if grouped and "feature_mask" in inspect.signature(info.fn).parameters:
        kwargs["feature_mask"] = ds.feature_mask  # one-hot columns: one player per column
    kwargs.update(method_kwargs(args, info, model, ds))
    if device.type != "cpu":  # the command's own copy of the model: moving it is harmless
        model, x = model.to(device), x.to(device)
        kwargs = {k: v.to(device) if hasattr(v, "to") else v for k, v in kwargs.items()}
    if dist.is_available() and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("gloo")
    with flag("--method", args.method):
        explanation = explain_sharded(model, x, method=args.method, **kwargs)
    names = {"feature_names": list(ds.feature_names)}
    if grouped:
        names["feature_groups"] = list(ds.feature_groups)
    explanation = explanation.to("cpu")  # saved and drawn from host memory
    explanation = replace(explanation, extras={**explanation.extras, **names})
    if not dist.is_initialized() or dist.get_rank() == 0:
        explanation.save(out)
        print(
            f"{args.method} on {args.model or 'digits/SmallCNN'} (rows {rows.start}:"
            f"{rows.start + len(explanation)}; {metrics}): {out}"
        )
        if args.plot is not None:
            print(f"plot: {_plot(explanation, ds, Path(args.plot))}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _plot(explanation: Any, ds: Any, path: Any) -> Any:
    """Draw the first example (image heatmap, or top features by group) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from pellucid._io import atomic_write
    from pellucid.plot import attribution_bars, image_attribution

    attributions = explanation.attributions
    if attributions.ndim == 4:
        ax = image_attribution(explanation)
    elif ds.feature_mask is not None:  # one bar per group (its columns share the value)
        mask = ds.feature_mask.reshape(-1)
        first = [int((mask == g).nonzero()[0]) for g in range(len(ds.feature_groups))]
        values = attributions.reshape(len(attributions), -1)[:, torch.tensor(first)]
        ax = attribution_bars(values, names=ds.feature_groups, title=explanation.method)
    else:
        ax = attribution_bars(explanation, names=ds.feature_names)
    figure = ax.figure
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(figure)
    return path
