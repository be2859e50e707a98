"""Benchmark: pellucid's rule-based decompositions vs captum, same work, one process.

DeepLIFT (zero baseline), LRP (epsilon) and guided backprop on the reference models
(SmallCNN on 8x8 digits, TinyResNet on 3x32x32, an MLP on 30 features) and, when
torchvision is installed, on random-weight torchvision models (``--zoo``). For each it
prints pellucid's time per example, captum's, captum's time over pellucid's (speed-up)
and both libraries' completeness gaps (DeepLIFT: ``max |sum(attr) - (f(x) - f(0))|`` over
``max |f(x) - f(0)|``; LRP: ``max |sum(R) - f(x)|`` over ``max |f(x)|``). ``--strategies``
also times DeepLIFT's ways of running against each other: the learned plan (``rules/_plan``),
the engine's joint pass that appends the shared reference row to the batch, and the separate
one-row reference pass.

DeepLIFT's row also shows its time over two floors. ``/floor``, the gradient floor: the
reference's forward (the shared zero baseline: one row, no graph), the inputs' forward with
a graph and one backward to the inputs, in plain torch with nothing around them
(:func:`deeplift_floor`). ``/arith``, the arithmetic floor: one forward of the rows with the
reference row appended and one backward, with the rescale arithmetic of every
non-linearity done by pellucid's own rule objects called straight from the model's ReLU and
max-pooling modules, nothing else around them (:func:`deeplift_arithmetic_floor`; it
returns pellucid's attributions). What lies between ``/arith`` and 1 is the engine: the
dispatch of every operation, the bookkeeping, the checks and the model guard. ``--resnet18`` adds torchvision's resnet18 on 3x64x64 (random
weights). Times are the process's CPU time (best of the interleaved rounds), which other
processes on a shared machine do not inflate; ``bench_callgrind.py deeplift-<model>``
counts the same variants in instructions.

    PYTHONPATH=src python benchmarks/bench_decomposition.py [--repeats 3] [--strategies]
        [--resnet18] [--zoo [--size 224] [--no-small]] [--floors 8,32,128]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from copy import deepcopy as copy_module
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import pellucid
from pellucid.models import MLP, SmallCNN, TinyResNet

warnings.filterwarnings("ignore")


def best_times(fns: list[Callable[[], Any]], repeats: int, min_seconds: float = 0.3) -> list[float]:
    """Best CPU time of each function, interleaved rounds (load hits all of them alike)."""
    for fn in fns:
        fn()
    best, spent, rounds = [float("inf")] * len(fns), [0.0] * len(fns), 0
    while rounds < repeats or (min(spent) < min_seconds and rounds < 200):
        for i, fn in enumerate(fns):
            start = time.process_time()
            fn()
            elapsed = time.process_time() - start
            best[i], spent[i] = min(best[i], elapsed), spent[i] + elapsed
        rounds += 1
    return best


def relative_gap(e: pellucid.Explanation, reference: torch.Tensor) -> float:
    """The decomposition's gap over the size of what it decomposes."""
    gap = e.extras.get("completeness_gap", e.extras.get("conservation_error"))
    return float(gap.abs().max() / reference.abs().max())


def captum_cases(model: nn.Module, x: torch.Tensor, t: int) -> dict[str, Callable[[], Any]]:
    from captum.attr import LRP, DeepLift, GuidedBackprop

    return {
        "deeplift": lambda: DeepLift(model).attribute(x, target=t),
        "lrp": lambda: LRP(model).attribute(x, target=t),
        "guided_backprop": lambda: GuidedBackprop(model).attribute(x, target=t),
    }


def deeplift_floor(model: nn.Module, x: torch.Tensor, t: int) -> Callable[[], Any]:
    """DeepLIFT's compute floor: the zero reference's forward (one shared row, no graph), the
    inputs' forward with a graph and one backward to the inputs, nothing around them."""
    reference = torch.zeros_like(x[:1])

    def floor() -> torch.Tensor:
        with torch.no_grad():
            model(reference)
        rows = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(rows)[:, t].sum(), rows)
        return grad

    return floor


class _JointRule(torch.autograd.Function):
    """One of pellucid's DeepLIFT rules applied to a joint batch, called straight from the
    module (no engine, no dispatch, no bookkeeping)."""

    @staticmethod
    def forward(ctx: Any, rule: Any, op: Any, x: torch.Tensor) -> torch.Tensor:
        y, ctx.state = rule.joint_forward(op, x)
        ctx.rule, ctx.op = rule, op
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        g = ctx.rule.joint_backward(ctx.op, ctx.state, grad)
        return None, None, g if isinstance(g, torch.Tensor) else g[0]


class _Ruled(nn.Module):
    def __init__(self, rule: Any, op: Any) -> None:
        super().__init__()
        self.rule, self.op = rule, op

    def forward(self, x: torch.Tensor) -> Any:
        return _JointRule.apply(self.rule, self.op, x)


def _ruled_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ReLU and MaxPool2d modules run pellucid's DeepLIFT rules
    directly (the reference models and resnet18 have no other non-linearity)."""
    from pellucid.attribution.rules._deeplift import DeepLiftMaxPool, Rescale

    copy = copy_module(model)
    for parent in list(copy.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, _Ruled(Rescale(relu=True), torch.relu))
            elif isinstance(child, nn.MaxPool2d):
                rest = (child.kernel_size, child.stride, child.padding, child.dilation)
                rule = DeepLiftMaxPool(F.max_pool2d, (*rest, child.ceil_mode), {})
                setattr(parent, name, _Ruled(rule, None))
            elif isinstance(child, nn.Module) and type(child).__name__ in _OTHER_NONLINEAR:
                raise TypeError(f"the arithmetic floor has no rule for {type(child).__name__}")
    for p in copy.parameters():
        p.requires_grad_(False)
    return copy


_OTHER_NONLINEAR = {"GELU", "SiLU", "Tanh", "Sigmoid", "Hardswish", "ReLU6", "LayerNorm"}


def deeplift_arithmetic_floor(model: nn.Module, x: torch.Tensor, t: int) -> Callable[[], Any]:
    """DeepLIFT's arithmetic floor: the gradient floor's passes (one joint forward of the
    rows and the zero reference row, one backward) plus the rescale arithmetic of every
    non-linearity, computed by pellucid's own rules called straight from the modules; what
    is left between it and ``pellucid.deeplift`` is the engine (dispatch, bookkeeping,
    checks, the model guard). Returns the attributions (equal to pellucid's)."""
    ruled = _ruled_copy(model)
    n = x.shape[0]

    def floor() -> torch.Tensor:
        rows = torch.cat([x, torch.zeros_like(x[:1])]).requires_grad_(True)
        (grad,) = torch.autograd.grad(ruled(rows)[:n, t].sum(), rows)
        return x * grad[:n]

    return floor


def deeplift_variants(model: nn.Module, x: torch.Tensor, t: int) -> dict[str, Callable[[], Any]]:
    """DeepLIFT with the default reference pass, with the separate one-row reference pass,
    its compute floor and captum's DeepLift, on the same model, inputs and target."""
    from captum.attr import DeepLift

    from pellucid.attribution.rules import _paired

    def two_passes() -> Any:
        saved = _paired.REFERENCE_PASS
        _paired.REFERENCE_PASS = _paired.TwoPasses()
        try:
            return pellucid.deeplift(model, x, target=t)
        finally:
            _paired.REFERENCE_PASS = saved

    return {
        "deeplift": lambda: pellucid.deeplift(model, x, target=t),
        "two_passes": two_passes,
        "floor": deeplift_floor(model, x, t),
        "arithmetic_floor": deeplift_arithmetic_floor(model, x, t),
        "captum": lambda: DeepLift(model).attribute(x, target=t),
    }


def reference_models(resnet18_size: int = 64) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """The reference models and inputs (seeded), and resnet18 when torchvision is there
    (``resnet18_size`` pixels a side)."""
    torch.manual_seed(0)
    models = {
        "smallcnn": (SmallCNN().eval(), torch.randn(32, 1, 8, 8)),
        "tinyresnet": (TinyResNet(in_channels=3).eval(), torch.randn(16, 3, 32, 32)),
        "mlp": (MLP(30, 2).eval(), torch.randn(32, 30)),
    }
    try:
        import torchvision
    except ImportError:
        return models
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)
    shape = (8, 3, resnet18_size, resnet18_size)
    models["resnet18"] = (_calibrated(resnet, torch.randn(shape)), torch.randn(shape))
    return models


def compare(title: str, model: nn.Module, x: torch.Tensor, repeats: int, methods: Any) -> None:
    print(f"\n{title}")
    print(
        f"{'method':<18}{'ms/ex ours':>11}{'ms/ex captum':>13}{'speed-up':>10}"
        f"{'gap ours':>10}{'gap captum':>11}{'/floor':>8}{'/arith':>8}"
    )
    t = 1
    theirs = captum_cases(model, x, t)
    with torch.no_grad():
        f_x, f_0 = model(x)[:, t], model(torch.zeros_like(x))[:, t]
    for name in methods:
        ours = getattr(pellucid, name)

        def run(ours: Any = ours) -> pellucid.Explanation:
            return ours(model, x, target=t)

        scale = {"deeplift": f_x - f_0, "lrp": f_x}.get(name)
        try:
            e = run()
        except pellucid.UnsupportedOperationError as exc:
            print(f"{name:<18}refused: {str(exc)[:90]}")
            continue
        gap = float("nan") if scale is None else relative_gap(e, scale)
        gap_theirs = float("nan")
        try:
            a = theirs[name]()
            fns = [run, theirs[name]]
            if scale is not None:
                summed = a.detach().flatten(1).sum(1)
                gap_theirs = float((summed - scale).abs().max() / scale.abs().max())
        except Exception as exc:  # captum refuses some models: report it, time ours only
            print(f"  (captum {name} failed: {type(exc).__name__}: {str(exc)[:80]})")
            fns = [run]
        floors = 0
        if name == "deeplift":
            fns.append(deeplift_floor(model, x, t))
            fns.append(deeplift_arithmetic_floor(model, x, t))
            floors = 2
        times = best_times(fns, repeats)
        n = x.shape[0]
        t_theirs = times[1] if len(fns) - floors > 1 else float("nan")
        floor = f"{times[0] / times[-2]:7.2f}x{times[0] / times[-1]:7.2f}x" if floors else ""
        print(
            f"{name:<18}{1e3 * times[0] / n:11.3f}{1e3 * t_theirs / n:13.3f}"
            f"{t_theirs / times[0]:9.2f}x{gap:10.1e}{gap_theirs:11.1e}{floor:>16}"
        )


def strategies(model: nn.Module, x: torch.Tensor, repeats: int) -> None:
    """DeepLIFT as it runs (the joint reference pass, by the learned plan once there is one)
    vs the engine's joint pass on every call (no plan) vs the separate one-row reference
    pass."""
    from pellucid.attribution.rules import _paired, _plan

    def run() -> Any:
        return pellucid.deeplift(model, x, target=1)

    def engine() -> Any:
        with _plan.engine_only():
            return run()

    def separate() -> Any:
        saved = _paired.REFERENCE_PASS
        _paired.REFERENCE_PASS = _paired.TwoPasses()
        try:
            return engine()
        finally:
            _paired.REFERENCE_PASS = saved

    a, b, c = run(), engine(), separate()
    torch.testing.assert_close(a.attributions, b.attributions, rtol=0, atol=0)
    torch.testing.assert_close(a.attributions, c.attributions, rtol=1e-4, atol=1e-6)
    t_plan, t_engine, t_separate = best_times([run, engine, separate], repeats)
    print(
        f"  deeplift {1e3 * t_plan:.2f} ms (learned plan), {1e3 * t_engine:.2f} ms (the engine's "
        f"joint pass), {1e3 * t_separate:.2f} ms (separate reference pass): the plan saves "
        f"{100 * (1 - t_plan / t_engine):.0f}% of the engine's time"
    )


def floor_table(
    models: dict[str, tuple[nn.Module, torch.Tensor]], batches: list[int], repeats: int
) -> None:
    """DeepLIFT's time over its gradient floor and its arithmetic floor, per model and batch
    size (the engine's cost is per call, the floors' per row: large batches amortize it)."""
    print(f"\n{'model':<12}{'batch':>6}{'deeplift ms':>13}{'/floor':>8}{'/arith':>8}")
    for name, (model, x) in models.items():
        for n in batches:
            rows = x[:1].expand(n, *x.shape[1:]).clone() + 0.1 * torch.randn(n, *x.shape[1:])
            fns = [
                lambda rows=rows, model=model: pellucid.deeplift(model, rows, target=1),
                deeplift_floor(model, rows, 1),
                deeplift_arithmetic_floor(model, rows, 1),
            ]
            t = best_times(fns, repeats)
            print(f"{name:<12}{n:>6}{1e3 * t[0]:13.3f}{t[0] / t[1]:7.2f}x{t[0] / t[2]:7.2f}x")


def _calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Batch-norm statistics of ``x`` (torchvision's initial ones shrink mobilenet_v2's output
    to ~1e-10)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.momentum = None
        m.reset_running_stats()
    if norms:
        with torch.no_grad():
            model.train()(x)
    return model.eval()


def zoo_models(size: int) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """Random-weight torchvision models in float64 (the completeness gaps are float64's)."""
    import torchvision

    out = []
    for name in ("mobilenet_v2", "convnext_tiny", "vit_b_16"):
        torch.manual_seed(0)
        kw = {"image_size": size} if name == "vit_b_16" else {}
        model = getattr(torchvision.models, name)(weights=None, **kw).double()
        if name == "vit_b_16":  # its head starts at zero: random weights, not a constant
            nn.init.normal_(model.heads.head.weight, std=0.05)
        model = _calibrated(model, torch.randn(4, 3, size, size, dtype=torch.float64))
        x = torch.randn(1, 3, size, size, dtype=torch.float64)
        out.append((f"torchvision {name} 3x{size}x{size}, batch 1, float64", model, x))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--zoo", action="store_true", help="also torchvision models")
    parser.add_argument("--size", type=int, default=224, help="image size of the zoo models")
    parser.add_argument("--no-small", action="store_true", help="skip the reference models")
    parser.add_argument("--strategies", action="store_true", help="time the reference passes")
    parser.add_argument("--resnet18", action="store_true", help="torchvision resnet18, 64x64")
    parser.add_argument(
        "--resnet18-size", type=int, default=64, help="resnet18's image size (224: ImageNet's)"
    )
    parser.add_argument(
        "--floors", default="", help="only DeepLIFT over its floors at these batch sizes: 8,32,128"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import captum

    print(f"torch {torch.__version__}, captum {captum.__version__}, {args.threads} threads")
    models = reference_models(args.resnet18_size)
    size = args.resnet18_size
    titles = {
        "smallcnn": "SmallCNN 1x8x8, batch 32",
        "tinyresnet": "TinyResNet 3x32x32, batch 16",
        "mlp": "MLP 30 features, batch 32",
        "resnet18": f"torchvision resnet18 3x{size}x{size} (random weights), batch 8",
    }
    chosen = [] if args.no_small else ["smallcnn", "tinyresnet", "mlp"]
    if args.resnet18:
        if "resnet18" not in models:
            raise SystemExit("--resnet18 needs torchvision (the zoo environment)")
        chosen.append("resnet18")
    if args.floors:
        floor_table(
            {k: models[k] for k in chosen if k != "mlp"},
            [int(b) for b in args.floors.split(",")],
            args.repeats,
        )
        return
    small = [(titles[k], *models[k]) for k in chosen]
    for title, model, x in small:
        compare(title, model, x, args.repeats, ("deeplift", "lrp", "guided_backprop"))
        if args.strategies:
            strategies(model, x, args.repeats)
    if args.zoo:
        for title, model, x in zoo_models(args.size):
            compare(title, model, x, 1, ("deeplift", "lrp", "guided_backprop"))


if __name__ == "__main__":
    main()
