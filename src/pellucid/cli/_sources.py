"""The ``--model SPEC`` / ``--data SPEC`` flags shared by explain, prune and diagnose.

``--model`` is a factory ``package.module:function`` (with ``--model-kwargs`` JSON and
``--weights``), or a ``.pt2`` / TorchScript file. ``--data`` is a ``.csv``/``.parquet``
table (``--target-column``, ``--categorical``), an ``.npz``/``.npy`` file, a folder of class
sub-folders of images (``--image-size``), an import path ``package.module:dataset`` or an
embedded dataset name; ``--test-data`` gives the user's own test split. Both become the
:class:`pellucid.sources.ModelSpec` / :class:`~pellucid.sources.DataSpec` the study's TOML
produces too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pellucid.cli._errors import UsageError, flag

__all__ = ["add_source_arguments", "data_spec", "is_user_model", "load_sources", "model_spec"]


def add_source_arguments(parser: argparse.ArgumentParser, *, model_help: str | None) -> None:
    """Add ``--model`` (unless ``model_help`` is None) and the model/data companion flags."""
    if model_help is not None:
        parser.add_argument("--model", required=False, default=None, help=model_help)
    group = parser.add_argument_group("your model and data")
    group.add_argument(
        "--model-kwargs", default="{}", metavar="JSON", help="factory keyword arguments (JSON)"
    )
    group.add_argument("--weights", default=None, help=".safetensors or torch.save state_dict")
    group.add_argument("--weights-key", default=None, help="checkpoint entry holding the weights")
    group.add_argument(
        "--data",
        default=None,
        help="CSV/Parquet table, .npz/.npy, image folder, pkg.mod:dataset or an embedded name",
    )
    group.add_argument("--test-data", default=None, help="your own test split (same format)")
    group.add_argument("--target-column", default=None, help="the label column of a table")
    group.add_argument(
        "--categorical", default="", help="comma-separated table columns to one-hot encode"
    )
    group.add_argument("--image-size", type=int, default=None, help="resize images to N x N")
    group.add_argument(
        "--standardize", action="store_true", help="standardize features on the training split"
    )


def is_user_model(args: argparse.Namespace) -> bool:
    """True when ``--model`` is a factory or a file, or ``--data`` is given."""
    model = args.model or ""
    return args.data is not None or ":" in model or Path(model).is_file()


def model_spec(args: argparse.Namespace) -> Any:
    """The :class:`~pellucid.sources.ModelSpec` of the flags."""
    from pellucid.sources import ModelSpec

    if not args.model:
        raise UsageError("`--model` is required: a factory 'package.module:function' or a file.")
    with flag("--model-kwargs", args.model_kwargs):
        kwargs = json.loads(args.model_kwargs)
        if not isinstance(kwargs, dict):
            raise TypeError(f"must be a JSON object like '{{\"width\": 32}}'; got {kwargs!r}.")
    return ModelSpec(
        source=args.model, kwargs=kwargs, weights=args.weights, weights_key=args.weights_key
    )


def data_spec(args: argparse.Namespace) -> Any:
    """The :class:`~pellucid.sources.DataSpec` of the flags."""
    from pellucid.sources import DataSpec

    if args.data is None:
        raise UsageError(
            "`--data` is required with your own model: a CSV/Parquet table (with "
            "--target-column), an .npz file, an image folder or 'package.module:dataset'."
        )
    categorical = tuple(c.strip() for c in args.categorical.split(",") if c.strip())
    spec = DataSpec(
        path=args.data,
        test_path=args.test_data,
        target=args.target_column,
        categorical=categorical,
        size=args.image_size,
        standardize=args.standardize,
        seed=getattr(args, "seed", 0) or 0,
    )
    with flag("--data", args.data):
        return spec.resolved()


def load_sources(args: argparse.Namespace, *, weights_needed: bool = False) -> tuple[Any, Any]:
    """``(model, dataset)`` from the flags; errors name the flag."""
    from pellucid.sources import load_data

    mspec = model_spec(args)
    dspec = data_spec(args)
    if weights_needed and mspec.is_factory and mspec.weights is None:
        raise UsageError(
            f"`--weights` is required with the factory {mspec.source!r}: an untrained model "
            "has nothing to explain or prune. Pass the trained weights (.safetensors or a "
            "torch.save state_dict)."
        )
    with flag("--data", args.data):
        ds = load_data(dspec)
    with flag("--model", args.model):
        model = mspec.load()
    return model, ds
