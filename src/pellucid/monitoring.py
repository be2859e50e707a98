"""GradientMonitor: per-layer gradient statistics during training, and a diagnosis.

Every step the monitor records, per parameter tensor, the gradient norm (one multi-tensor
kernel, shared with the clipper and the non-finite guard through
:class:`~pellucid.clipping.GradNorms`; a NaN/inf gradient makes it non-finite, which is how
non-finite steps are counted) and keeps it on the device; every ``log_every`` steps it also
samples max |g|, weight norms, the update-to-weight ratio ``||dW|| / ||W||`` and which units
received any gradient, and moves everything to the host in one transfer. Layers are
the modules that own parameters; a layer's gradient norm is the norm over its tensors.

:meth:`GradientMonitor.diagnose` turns the history into findings a person can act on:
exploding gradients (growth over steps, or one layer orders of magnitude above the others,
and the first layer to go non-finite), vanishing gradients (layers orders of magnitude
below the others) and dead units.

Example:
    >>> import torch
    >>> from pellucid.models import MLP
    >>> from pellucid.training import fit
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> monitor = GradientMonitor(log_every=2)
    >>> _ = fit(MLP(4, 2), (x, y), epochs=2, batch_size=16, monitor=monitor, progress=False)
    >>> len(monitor.steps), monitor.layers
    (8, ['net.0', 'net.2', 'net.4'])
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pellucid._io import atomic_write, atomic_write_json
from pellucid._validation import check_float, check_int
from pellucid.clipping.functional import GradNorms, layer_groups
from pellucid.training import Callback, TrainState

__all__ = ["Finding", "GradientMonitor", "diagnose_history"]

_NORMS_KEY = "grad_norms"
_COLUMNS = ("step", "layer", "grad_norm", "grad_max", "weight_norm", "update_ratio",
            "nonfinite", "loss")


class GradientMonitor(Callback):
    """Record per-layer gradient statistics during ``fit``; diagnose explosion and vanishing.

    Args:
        log_every: steps between host synchronisations (and weight/update samples).
        model: attach now (otherwise ``fit`` attaches the model it trains).

    Attributes:
        layers: layer (module) names, in registration order.
        steps: the recorded step indices.
    """

    def __init__(self, *, log_every: int = 10, model: nn.Module | None = None) -> None:
        self.log_every = check_int("log_every", log_every, min_value=1)
        self.layers: list[str] = []
        self.steps: list[int] = []
        self._params: list[nn.Parameter] = []
        self._layer_of: list[int] = []
        self._pending: list[torch.Tensor] = []
        self._pending_steps: list[int] = []
        self._rows: list[torch.Tensor] = []  # host: [n_tensors * 2 + 1] per step
        self._samples: dict[int, torch.Tensor] = {}  # step -> [weight_norm, update_norm] per tensor
        self._snapshot: list[torch.Tensor] | None = None
        self._alive: dict[int, torch.Tensor] = {}
        self._sampled_step: int | None = None
        self._sample_max = torch.zeros(0)
        if model is not None:
            self.attach(model)

    def attach(self, model: nn.Module) -> GradientMonitor:
        """Start monitoring ``model`` (clears any history)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}.")
        groups = {n: [p for p in ps if p.requires_grad] for n, ps in layer_groups(model).items()}
        groups = {n: ps for n, ps in groups.items() if ps}
        if not groups:
            raise ValueError("`model` must have parameters that require gradients; got none.")
        self.layers = list(groups)
        self._params = [p for ps in groups.values() for p in ps]
        self._layer_of = [i for i, ps in enumerate(groups.values()) for _ in ps]
        self._unit_params: dict[int, list[int]] = {}
        for j in range(len(self.layers)):
            indices = [i for i, layer in enumerate(self._layer_of) if layer == j]
            units = next((self._params[i].shape[0] for i in indices
                          if self._params[i].ndim >= 2), None)
            if units is not None:
                self._unit_params[j] = [i for i in indices if self._params[i].ndim >= 1
                                        and self._params[i].shape[0] == units]
        self.steps, self._rows, self._pending, self._pending_steps = [], [], [], []
        self._samples, self._alive, self._snapshot = {}, {}, None
        return self

    # -- training-loop hooks -------------------------------------------------------------
    def on_train_begin(self, state: TrainState) -> None:
        if not self._params or not any(p is q for p in state.model.parameters()
                                       for q in self._params[:1]):
            self.attach(state.model)

    @torch.no_grad()
    def on_before_step(self, state: TrainState) -> bool | None:
        params = self._params
        grads = [p.grad for p in params]
        complete = all(g is not None for g in grads)
        norms = GradNorms(grads if complete else [g for g in grads if g is not None])  # type: ignore[misc]
        state.info[_NORMS_KEY] = norms  # the clipper and the non-finite guard reuse these
        sampled = state.step % self.log_every == 0
        two = self._full(norms.norms(2.0), grads, complete)
        loss = state.loss.detach().reshape(()) if state.loss is not None else torch.tensor(math.nan)
        values = (*two, loss)
        if not all(v.device == loss.device for v in values):
            values = tuple(v.to(loss.device) for v in values)
        self._pending.append(torch.stack(values))  # stack promotes to the widest dtype
        self._pending_steps.append(state.step)
        if sampled:
            self._sampled_step = state.step
            self._sample_max = torch.stack(
                [v.to(loss.device) for v in self._full(norms.norms(math.inf), grads, complete)])
            self._snapshot = list(torch._foreach_mul([p.detach() for p in params], 1.0))
            for j, indices in self._unit_params.items():
                for i in indices:
                    g = grads[i]
                    if g is not None:  # a unit is alive if its weight row or bias moved
                        moved = (g.reshape(g.shape[0], -1) != 0).any(dim=1)  # NaN: alive
                        prev = self._alive.get(j)
                        self._alive[j] = moved if prev is None else prev | moved
        return None

    @staticmethod
    def _full(values: list[torch.Tensor], grads: list[Any], complete: bool) -> list[torch.Tensor]:
        if complete:
            return values
        it = iter(values)
        nan = torch.tensor(math.nan)
        return [next(it) if g is not None else nan for g in grads]

    @torch.no_grad()
    def on_after_step(self, state: TrainState) -> None:
        if self._snapshot is not None and self._sampled_step is not None:
            weights = torch._foreach_norm([p.detach() for p in self._params])
            deltas = torch._foreach_norm(
                torch._foreach_sub([p.detach() for p in self._params], self._snapshot))
            device = self._sample_max.device
            self._samples[self._sampled_step] = torch.stack([
                torch.stack(list(weights)).to(device, torch.float64),
                torch.stack(list(deltas)).to(device, torch.float64),
                self._sample_max.to(torch.float64),
            ])
            self._snapshot = None
        if (state.step + 1) % self.log_every == 0:
            self.flush()

    def on_train_end(self, state: TrainState) -> None:
        self.flush()

    def flush(self) -> None:
        """Move the pending device records to the host (one synchronisation)."""
        if not self._pending:
            return
        block = torch.stack(self._pending).cpu().to(torch.float64)
        self._rows.extend(block.unbind(0))
        self.steps.extend(self._pending_steps)
        self._pending, self._pending_steps = [], []
        for step in list(self._samples):
            self._samples[step] = self._samples[step].cpu()

    # -- views ---------------------------------------------------------------------------
    def _matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(layer gradient norms [steps, layers], losses [steps]) on the host."""
        self.flush()
        n = len(self._params)
        if not self._rows:
            return (torch.zeros(0, len(self.layers), dtype=torch.float64),
                    torch.zeros(0, dtype=torch.float64))
        rows = torch.stack(self._rows)
        index = torch.tensor(self._layer_of)
        sq = torch.zeros(rows.shape[0], len(self.layers), dtype=torch.float64)
        sq.index_add_(1, index, rows[:, :n] ** 2)  # NaN/inf in a tensor spread to its layer
        return sq.sqrt(), rows[:, n]

    def layer_norms(self) -> dict[str, list[float]]:
        """Per-layer gradient norm over the recorded steps."""
        norms, _ = self._matrix()
        return {name: norms[:, j].tolist() for j, name in enumerate(self.layers)}

    def _layer_samples(self) -> dict[int, tuple[list[float], list[float], list[float]]]:
        """step -> per-layer (weight norm, update-to-weight ratio, max |g|)."""
        self.flush()
        index = torch.tensor(self._layer_of)
        columns = [[i for i, j in enumerate(self._layer_of) if j == layer]
                   for layer in range(len(self.layers))]
        out = {}
        for step, sample in self._samples.items():
            w = torch.zeros(len(self.layers), dtype=torch.float64).index_add_(
                0, index, sample[0] ** 2).sqrt()
            d = torch.zeros(len(self.layers), dtype=torch.float64).index_add_(
                0, index, sample[1] ** 2).sqrt()
            mx = torch.stack([sample[2, cols].amax() for cols in columns])  # NaN-propagating
            out[step] = (w.tolist(), (d / w.clamp_min(1e-30)).tolist(), mx.tolist())
        return out

    def records(self) -> list[dict[str, Any]]:
        """One row per (step, layer): grad_norm, nonfinite (0/1) and the step's loss every
        step; grad_max, weight_norm and update_ratio on sampled steps (NaN otherwise)."""
        norms, losses = self._matrix()
        samples = self._layer_samples()
        rows = []
        nan3 = (None, None, None)
        for i, step in enumerate(self.steps):
            weight, ratio, maxima = samples.get(step, nan3)
            for j, layer in enumerate(self.layers):
                norm = float(norms[i, j])
                rows.append({
                    "step": step, "layer": layer, "grad_norm": norm,
                    "grad_max": maxima[j] if maxima else math.nan,
                    "weight_norm": weight[j] if weight else math.nan,
                    "update_ratio": ratio[j] if ratio else math.nan,
                    "nonfinite": int(not math.isfinite(norm)),
                    "loss": float(losses[i]),
                })
        return rows

    def dead_units(self) -> dict[str, tuple[int, int]]:
        """``{layer: (dead units, units)}``: output units whose weight row and bias never got
        a nonzero gradient on a sampled step (layers with a 2+-dim weight)."""
        return {self.layers[j]: (int((~alive).sum()), alive.numel())
                for j, alive in self._alive.items()}

    def diagnose(self, *, ratio: float = 100.0, growth: float = 100.0) -> list[Finding]:
        """Findings about exploding, vanishing and dead gradients, most severe first.

        Args:
            ratio: a layer whose typical gradient RMS is this many times above (below) the
                median layer is reported as exploding (vanishing).
            growth: a total-norm growth from the first to the last tenth of training by this
                factor is reported as exploding.
        """
        ratio = check_float("ratio", ratio, min_value=1.0, min_inclusive=False)
        growth = check_float("growth", growth, min_value=1.0, min_inclusive=False)
        norms, losses = self._matrix()
        sizes = [0] * len(self.layers)
        for p, j in zip(self._params, self._layer_of, strict=True):
            sizes[j] += p.numel()
        return diagnose_history(
            layers=self.layers, steps=self.steps, norms=norms, losses=losses,
            sizes=sizes, dead=self.dead_units(), ratio=ratio, growth=growth,
        )

    # -- files and figures ---------------------------------------------------------------
    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`records` as CSV (atomically)."""
        rows = self.records()

        def _write(tmp: str) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(_COLUMNS))
                writer.writeheader()
                writer.writerows(rows)

        return atomic_write(path, _write)

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write layers, per-step records and the diagnosis as JSON (atomically)."""
        return atomic_write_json(path, self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary: layers, steps, per-layer norms, records, findings."""
        return {
            "layers": self.layers,
            "steps": self.steps,
            "layer_norms": self.layer_norms(),
            "records": self.records(),
            "findings": [f.to_dict() for f in self.diagnose()],
        }

    def plot(self, *, ax: Any = None, layers: Sequence[str] | None = None) -> Any:
        """The gradient-flow figure (see :func:`pellucid.plot.gradients.gradient_flow`)."""
        from pellucid.plot.gradients import gradient_flow

        return gradient_flow(self, ax=ax, layers=layers)


@dataclass(frozen=True)
class Finding:
    """One diagnosis: ``kind`` is ``nonfinite``, ``exploding``, ``vanishing`` or
    ``dead_units``; ``layers`` are the culprits (most affected first); ``value`` is the
    evidence (growth factor, ratio to the median layer, fraction of dead units)."""

    kind: str
    layers: tuple[str, ...]
    message: str
    step: int | None = None
    value: float = math.nan

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        out = asdict(self)
        out["layers"] = list(self.layers)
        return out


def _median(x: torch.Tensor) -> float:
    return float(x.median()) if x.numel() else math.nan


def _nonfinite(layers: list[str], steps: list[int], losses: torch.Tensor,
               norms: torch.Tensor) -> Finding | None:
    bad = ~torch.isfinite(norms)
    rows = torch.nonzero(bad.any(dim=1)).flatten()
    if not rows.numel():
        return None
    r = int(rows[0])
    hit = [layers[j] for j in torch.nonzero(bad[r]).flatten().tolist()]
    if not math.isfinite(float(losses[r])) or len(hit) == len(layers):
        before = norms[:r][torch.isfinite(norms[:r]).all(dim=1)]
        lead = ""
        if before.shape[0] >= 2:
            growth = before[-1] / before[0].clamp_min(1e-30)
            j = int(torch.nan_to_num(growth, nan=-1.0).argmax())
            hit = [layers[j]] + [n for n in hit if n != layers[j]]
            lead = f" Before that, {layers[j]} grew fastest (x{float(growth[j]):.3g})."
        return Finding(
            "nonfinite", tuple(hit),
            f"The loss and every layer's gradient became non-finite at step {steps[r]}: the "
            f"forward pass overflowed.{lead} Clip the gradients (clip_by_global_norm) or lower "
            "the learning rate; use nonfinite='skip' to drop such steps.", steps[r],
        )
    origin = hit[-1]  # backward reaches the layer closest to the output first
    ordered = (origin, *[n for n in hit if n != origin])
    return Finding(
        "nonfinite", ordered,
        f"Gradients first became non-finite at step {steps[r]} in {origin} (the layer nearest "
        f"the output among the {len(hit)} affected: {', '.join(hit[:6])}). Look for an "
        "overflow or a log/division by zero there; clip or use nonfinite='skip'.", steps[r],
    )


def _growth(layers: list[str], steps: list[int], norms: torch.Tensor, growth: float,
            blew_up: bool) -> Finding | None:
    finite_rows = torch.isfinite(norms).all(dim=1)
    good = norms[finite_rows]
    good_steps = [s for s, ok in zip(steps, finite_rows.tolist(), strict=True) if ok]
    if good.shape[0] < 4:
        return None
    w = max(1, good.shape[0] // 10)
    total = good.pow(2).sum(dim=1).sqrt()
    early, late = _median(total[:w]), _median(total[-w:])
    factor = late / max(early, 1e-30)
    if factor < growth and not (blew_up and factor > math.sqrt(growth)):
        return None
    per_layer = good[-w:].median(dim=0).values / good[:w].median(dim=0).values.clamp_min(1e-30)
    order = torch.argsort(per_layer, descending=True).tolist()[:3]
    top = ", ".join(f"{layers[j]} (x{float(per_layer[j]):.3g})" for j in order)
    return Finding(
        "exploding", tuple(layers[j] for j in order),
        f"The gradient norm grew x{factor:.3g} between steps {good_steps[0]}-"
        f"{good_steps[w - 1]} and {good_steps[-w]}-{good_steps[-1]}; fastest-growing layers: "
        f"{top}. Clip the global norm (e.g. clip_by_global_norm({early:.3g}), the early "
        "median) or lower the learning rate.", good_steps[-1], factor,
    )


def _depth(layers: list[str], norms: torch.Tensor, sizes: list[int], ratio: float
           ) -> list[Finding]:
    if len(layers) < 2 or norms.shape[0] == 0:
        return []
    rms = torch.stack([
        _finite_median(norms[:, j]) / math.sqrt(max(sizes[j], 1)) for j in range(len(layers))
    ])
    out = []
    high, low = [], []
    # the reference is the output side, which receives the loss gradient directly
    tail = rms[-max(1, math.ceil(len(layers) / 4)):]
    ref = _median(tail[torch.isfinite(tail)])
    if not math.isfinite(ref) or ref <= 0:
        return []
    for j in range(len(layers)):
        value = float(rms[j])
        if not math.isfinite(value):
            continue
        if value > ratio * ref:
            high.append((j, value / ref))
        elif value * ratio < ref:
            low.append((j, ref / max(value, 1e-300)))
    if high:
        high.sort(key=lambda t: -t[1])
        names = ", ".join(f"{layers[j]} (x{r:.3g})" for j, r in high[:4])
        out.append(Finding(
            "exploding", tuple(layers[j] for j, _ in high),
            f"Gradients explode through depth: {names} above the gradient RMS of the "
            "output-side layers. They grow as they flow back (weights initialised too large, no "
            "normalisation). Rescale the init or add normalisation; AGC or a global-norm "
            "clip keeps training stable meanwhile.", None, high[0][1],
        ))
    if low:
        low.sort(key=lambda t: -t[1])
        names = ", ".join(f"{layers[j]} (1/{r:.3g})" for j, r in low[:4])
        out.append(Finding(
            "vanishing", tuple(layers[j] for j, _ in low),
            f"Gradients vanish in {names} of the output-side layers' "
            "gradient RMS: these layers "
            "barely learn. Use a variance-preserving init (Kaiming/Xavier), non-saturating "
            "activations, normalisation or residual connections.", None, low[0][1],
        ))
    return out


def _finite_median(x: torch.Tensor) -> torch.Tensor:
    x = x[torch.isfinite(x)]
    return x.median() if x.numel() else torch.tensor(math.nan, dtype=torch.float64)


def _dead(dead: dict[str, tuple[int, int]]) -> list[Finding]:
    hit = sorted(((n_dead / n_units, layer, n_dead, n_units)
                  for layer, (n_dead, n_units) in dead.items() if n_dead and n_units),
                 reverse=True)
    if not hit:
        return []
    parts = ", ".join(f"{layer} {d}/{u} ({frac:.0%})" for frac, layer, d, u in hit[:6])
    return [Finding(
        "dead_units", tuple(layer for _, layer, _, _ in hit),
        f"Dead units (no gradient on any sampled step): {parts}. If these are ReLUs that "
        "died, lower the learning rate, check the bias init, or use LeakyReLU/GELU.",
        None, hit[0][0],
    )]


def diagnose_history(*, layers: list[str], steps: list[int], norms: torch.Tensor,
                     losses: torch.Tensor, sizes: list[int],
                     dead: dict[str, tuple[int, int]], ratio: float, growth: float
                     ) -> list[Finding]:
    """The findings of :meth:`GradientMonitor.diagnose` from host-side arrays."""
    findings: list[Finding] = []
    nonfinite = _nonfinite(layers, steps, losses, norms)
    if nonfinite is not None:
        findings.append(nonfinite)
    grew = _growth(layers, steps, norms, growth, nonfinite is not None)
    if grew is not None:
        findings.append(grew)
    findings.extend(_depth(layers, norms, sizes, ratio))
    findings.extend(_dead(dead))
    return findings

