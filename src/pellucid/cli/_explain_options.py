"""``pellucid explain``'s method options: each flag checked against the method and model.

``--layer``, ``--n-samples``, ``--baseline`` and ``--feature-mask`` become the method's
keyword arguments only where its signature takes them; otherwise the error names the
methods that do. Layer methods without ``--layer`` list the model's layers; an integer
``--target`` is checked against the model's outputs before any work.
"""

from __future__ import annotations

import argparse
import inspect
from typing import Any

from pellucid.cli._errors import UsageError, flag

__all__ = ["check_target", "input_kind", "method_kwargs", "methods_epilog"]


def methods_epilog() -> str:
    """The registered methods by kind, for ``pellucid explain --help``."""
    from pellucid._registry import KINDS, get_method, list_methods

    lines = ["methods (--method), by kind; [layer]: needs --layer:"]
    for kind in KINDS:
        names = [n + (" [layer]" if get_method(n).needs_layer else "") for n in list_methods(kind)]
        if names:
            lines.append(f"  {kind}: {', '.join(names)}")
    return "\n".join(lines)


def input_kind(architecture: str, x: Any) -> str:
    """``sequence``, ``image`` or ``tabular``: what the model takes."""
    if architecture in ("SequenceRNN", "TinyTransformer") or (
        x.ndim == 2 and not x.is_floating_point()
    ):
        return "sequence"
    return "image" if x.ndim > 2 else "tabular"


def check_target(target: int | str, model: Any, x: Any) -> None:
    """Refuse an integer ``--target`` outside the model's outputs (one forward on one row)."""
    import torch

    if not isinstance(target, int):
        return
    with torch.no_grad():
        n_out = int(model(x[:1]).reshape(1, -1).shape[1])
    if not 0 <= target < n_out:
        raise UsageError(
            f"`--target` must be a class index in 0..{n_out - 1} (the model has {n_out} "
            f"outputs), or 'predicted'; got {target}."
        )


def _takers(keyword: str) -> list[str]:
    from pellucid._registry import get_method, list_methods

    return [m for m in list_methods() if keyword in inspect.signature(get_method(m).fn).parameters]


def method_kwargs(args: argparse.Namespace, info: Any, model: Any, ds: Any) -> dict[str, Any]:
    """The method's keyword arguments from the flags, each refused where it does not apply."""
    import torch

    from pellucid._validation import did_you_mean

    accepted = inspect.signature(info.fn).parameters
    kwargs: dict[str, Any] = {}

    def offer(flag_name: str, keyword: str, value: Any) -> None:
        if keyword not in accepted:
            raise UsageError(
                f"`{flag_name}` does not apply to --method {info.name}; it applies to: "
                f"{', '.join(_takers(keyword))}."
            )
        kwargs[keyword] = value

    modules = dict(model.named_modules()) if hasattr(model, "named_modules") else {}
    if info.needs_layer and args.layer is None:
        names = [n for n, m in modules.items() if n and not list(m.children())]
        raise UsageError(
            f"`--method {info.name}` needs `--layer NAME`, the layer to attribute at; "
            f"the model's layers: {', '.join(names)}."
        )
    if args.layer is not None:
        if args.layer not in modules or not args.layer:
            raise UsageError(
                f"`--layer` must name a module of the model; got {args.layer!r}."
                + did_you_mean(args.layer, [n for n in modules if n])
            )
        offer("--layer", "layer", modules[args.layer])
    if args.n_samples is not None:
        offer("--n-samples", "n_samples", args.n_samples)
    if args.baseline is not None:
        if args.baseline == "mean":
            value: Any = ds.X_train.mean(0)
        else:
            try:
                value = float(args.baseline)
            except ValueError:
                raise UsageError(
                    f"`--baseline` must be a number or 'mean'; got {args.baseline!r}."
                ) from None
        offer("--baseline", "baseline", value)
    if args.feature_mask is not None:
        mask: Any = args.feature_mask
        if mask not in ("grid", "slic"):
            import numpy as np

            with flag("--feature-mask", mask):
                mask = torch.from_numpy(np.load(mask, allow_pickle=False)).long()
        offer("--feature-mask", "feature_mask", mask)
    return kwargs
