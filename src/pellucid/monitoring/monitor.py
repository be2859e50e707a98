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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pellucid._io import atomic_write, atomic_write_json
from pellucid._validation import check_float, check_int
from pellucid.clipping.callback import NORMS_KEY
from pellucid.clipping.functional import GradNorms
from pellucid.clipping.grouped import layer_groups
from pellucid.monitoring.diagnosis import Finding, diagnose_history
from pellucid.training import Callback, TrainState

__all__ = ["Finding", "GradientMonitor", "diagnose_history"]

_COLUMNS = (
    "step",
    "layer",
    "grad_norm",
    "grad_max",
    "weight_norm",
    "update_ratio",
    "nonfinite",
    "loss",
)


class GradientMonitor(Callback):
    """Record per-layer gradient statistics during ``fit``; diagnose explosion and vanishing.

    Args:
        log_every: steps between host synchronisations (and weight/update samples).
        model: attach now (otherwise ``fit`` attaches the model it trains).

    Attributes:
        layers: layer (module) names, in registration order.
        steps: the recorded step indices.

    Raises:
        TypeError: `log_every` is not an integer, or `model` is not an nn.Module.
        ValueError: `log_every` < 1, or `model` has no parameter that requires gradients.
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
        self._alive_samples: dict[int, int] = {}
        self._sampled_step: int | None = None
        self._sample_max = torch.zeros(0)
        if model is not None:
            self.attach(model)

    def attach(self, model: nn.Module) -> GradientMonitor:
        """Start monitoring ``model`` (clears any history).

        Raises:
            TypeError: `model` is not an nn.Module.
            ValueError: `model` has no parameter that requires gradients.
        """
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
            units = next(
                (self._params[i].shape[0] for i in indices if self._params[i].ndim >= 2), None
            )
            if units is not None:
                self._unit_params[j] = [
                    i
                    for i in indices
                    if self._params[i].ndim >= 1 and self._params[i].shape[0] == units
                ]
        self.steps, self._rows, self._pending, self._pending_steps = [], [], [], []
        self._samples, self._alive, self._snapshot = {}, {}, None
        self._alive_samples = {}
        return self

    # -- training-loop hooks -------------------------------------------------------------
    def on_train_begin(self, state: TrainState) -> None:
        if not self._params or not any(
            p is q for p in state.model.parameters() for q in self._params[:1]
        ):
            self.attach(state.model)

    @torch.no_grad()
    def on_before_step(self, state: TrainState) -> bool | None:
        params = self._params
        grads = [p.grad for p in params]
        complete = all(g is not None for g in grads)
        norms = GradNorms(grads if complete else [g for g in grads if g is not None])  # type: ignore[arg-type]
        state.info[NORMS_KEY] = norms  # the clipper and the non-finite guard reuse these
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
                [v.to(loss.device) for v in self._full(norms.norms(math.inf), grads, complete)]
            )
            self._snapshot = list(torch._foreach_mul([p.detach() for p in params], 1.0))
            for j, indices in self._unit_params.items():
                for i in indices:
                    g = grads[i]
                    if g is not None:  # a unit is alive if its weight row or bias moved
                        moved = (g.reshape(g.shape[0], -1) != 0).any(dim=1)  # NaN: alive
                        prev = self._alive.get(j)
                        self._alive[j] = moved if prev is None else prev | moved
                self._alive_samples[j] = self._alive_samples.get(j, 0) + 1
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
                torch._foreach_sub([p.detach() for p in self._params], self._snapshot)
            )
            device = self._sample_max.device
            self._samples[self._sampled_step] = torch.stack(
                [
                    torch.stack(list(weights)).to(device, torch.float64),
                    torch.stack(list(deltas)).to(device, torch.float64),
                    self._sample_max.to(torch.float64),
                ]
            )
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
            return (
                torch.zeros(0, len(self.layers), dtype=torch.float64),
                torch.zeros(0, dtype=torch.float64),
            )
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
        columns = [
            [i for i, j in enumerate(self._layer_of) if j == layer]
            for layer in range(len(self.layers))
        ]
        out = {}
        for step, sample in self._samples.items():
            w = (
                torch.zeros(len(self.layers), dtype=torch.float64)
                .index_add_(0, index, sample[0] ** 2)
                .sqrt()
            )
            d = (
                torch.zeros(len(self.layers), dtype=torch.float64)
                .index_add_(0, index, sample[1] ** 2)
                .sqrt()
            )
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
                rows.append(
                    {
                        "step": step,
                        "layer": layer,
                        "grad_norm": norm,
                        "grad_max": maxima[j] if maxima else math.nan,
                        "weight_norm": weight[j] if weight else math.nan,
                        "update_ratio": ratio[j] if ratio else math.nan,
                        "nonfinite": int(not math.isfinite(norm)),
                        "loss": float(losses[i]),
                    }
                )
        return rows

    def dead_units(self, *, min_samples: int = 3) -> dict[str, tuple[int, int]]:
        """``{layer: (dead units, units)}``: output units whose weight row and bias never got
        a nonzero gradient on a sampled step (layers with a 2+-dim weight, sampled at least
        ``min_samples`` times)."""
        return {
            self.layers[j]: (int((~alive).sum()), alive.numel())
            for j, alive in self._alive.items()
            if self._alive_samples.get(j, 0) >= min_samples
        }

    def diagnose(self, *, ratio: float = 100.0, growth: float = 100.0) -> list[Finding]:
        """Findings about exploding, vanishing and dead gradients, most severe first.

        Args:
            ratio: a layer whose typical gradient RMS is this many times above (below) the
                median layer is reported as exploding (vanishing).
            growth: a total-norm growth from the first to the last tenth of training by this
                factor is reported as exploding.

        Raises:
            TypeError: `ratio` or `growth` is not a real number.
            ValueError: `ratio` or `growth` is not > 1.
        """
        ratio = check_float("ratio", ratio, min_value=1.0, min_inclusive=False)
        growth = check_float("growth", growth, min_value=1.0, min_inclusive=False)
        norms, losses = self._matrix()
        sizes = [0] * len(self.layers)
        for p, j in zip(self._params, self._layer_of, strict=True):
            sizes[j] += p.numel()
        return diagnose_history(
            layers=self.layers,
            steps=self.steps,
            norms=norms,
            losses=losses,
            sizes=sizes,
            dead=self.dead_units(),
            ratio=ratio,
            growth=growth,
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
