"""``pellucid show FILE``: look at a saved explanation (a PNG, or the top features)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pellucid.cli._errors import UsageError, flag
from pellucid.cli._paths import output_file

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add the ``show`` subparser to ``sub``."""
    parser = sub.add_parser(
        "show",
        help="render a saved explanation to PNG, or print the top features of tabular rows",
        description="Read an Explanation file written by `pellucid explain` (or "
        "Explanation.save). Images: draw the first --rows examples' attribution maps into a "
        "PNG (default: FILE with the suffix .png) and say where. Tabular rows: print each "
        "row's --top features by |attribution| (and, with --out, draw them as bars).",
    )
    parser.add_argument("file", metavar="FILE", help="an explanation file (.safetensors)")
    parser.add_argument("--out", default=None, help="PNG to write (images: default FILE.png)")
    parser.add_argument("--rows", type=int, default=4, help="examples to show (default: 4)")
    parser.add_argument("--top", type=int, default=5, help="features per row (default: 5)")
    parser.set_defaults(run=run)


def _save(fig: Any, path: Path) -> None:
    from pellucid._io import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def _images(explanation: Any, rows: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pellucid.plot import image_attribution

    fig, axes = plt.subplots(1, rows, figsize=(3.2 * rows, 3.0), squeeze=False)
    for i, ax in enumerate(axes[0]):
        image_attribution(explanation, index=i, ax=ax, title=f"{explanation.method} #{i}")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _tabular(explanation: Any, rows: int, top: int, path: Path | None) -> None:
    attr = explanation.attributions.detach().double().reshape(len(explanation), -1)
    inputs = explanation.inputs.detach().double().reshape(len(explanation), -1)
    k = min(top, attr.shape[1])
    print(f"{explanation.method}: {len(explanation)} rows x {attr.shape[1]} features")
    for i in range(rows):
        order = attr[i].abs().argsort(descending=True)[:k].tolist()
        parts = ", ".join(f"x[{j}]={inputs[i, j]:.3g}: {attr[i, j]:+.3g}" for j in order)
        print(f"row {i}: {parts}")
    if path is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from pellucid.plot import attribution_bars

        fig, axes = plt.subplots(rows, 1, figsize=(6.0, 2.4 * rows), squeeze=False)
        for i, ax in enumerate(axes[:, 0]):
            attribution_bars(explanation, index=i, top_k=k, ax=ax, title=f"row {i}")
        fig.tight_layout()
        _save(fig, path)
        plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Render or print the explanation in ``args.file``.

    Raises:
        UsageError: a count flag is < 1.
    """
    from pellucid.explanation import Explanation

    for name in ("rows", "top"):
        if getattr(args, name) < 1:
            raise UsageError(f"`--{name}` must be an integer >= 1; got {getattr(args, name)}.")
    with flag("FILE", args.file):
        explanation = Explanation.load(args.file)
    rows = min(args.rows, len(explanation))
    image = explanation.attributions.ndim >= 3
    default = str(Path(args.file).with_suffix(".png")) if image else None
    target = args.out or default
    path = None if target is None else output_file("--out", target)
    if image and path is not None:
        _images(explanation, rows, path)
    else:
        _tabular(explanation, rows, args.top, path)
    if path is not None:
        print(f"wrote {path}")
    return 0
