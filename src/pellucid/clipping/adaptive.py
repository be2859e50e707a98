"""Adaptive clippers: thresholds learned from the history of gradient norms.

* :class:`AutoClip` (Seetharaman et al. 2020): the bound is a percentile of every global
  gradient norm seen so far (including this step's).
* :class:`ZClip` (Kumar et al. 2025): an EMA of the norm's mean and variance; a norm whose
  z-score exceeds ``z_thresh`` is clipped to ``mean + z_thresh * std / (z / z_thresh)``,
  and the EMA is updated with the clipped value.

Both are transforms (usable in :func:`~pellucid.clipping.chain` and
:func:`~pellucid.clipping.apply_`), keep their state in device tensors (no host sync per
step) and round-trip through ``state_dict()`` / ``load_state_dict()``. Non-finite norms are
kept out of the statistics.

Example:
    >>> import torch
    >>> clip = AutoClip(percentile=50)
    >>> w = torch.nn.Parameter(torch.zeros(1))
    >>> for g in (1.0, 3.0, 100.0):
    ...     w.grad = torch.tensor([g])
    ...     stats = clip.clip_(w)
    >>> round(float(w.grad), 3)
    3.0
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pellucid._validation import check_choice, check_float, check_int
from pellucid.clipping.functional import GradNorms, Parameters
from pellucid.clipping.stats import ClipStats
from pellucid.clipping.transforms import Scaling, _norms, apply_

__all__ = ["AutoClip", "ZClip"]


def _stats(total: torch.Tensor, coef: torch.Tensor, threshold: torch.Tensor) -> ClipStats:
    return ClipStats(
        norm_before=total,
        norm_after=total * coef,
        clip_coef=coef,
        threshold=threshold.to(total.dtype),
        clipped=coef < 1.0,
        nonfinite=~torch.isfinite(total),
        skipped=torch.zeros((), dtype=torch.bool, device=total.device),
    )


def _no_gradients() -> tuple[torch.Tensor, ClipStats]:
    """The scale of a step without any gradient: nothing to clip, nothing recorded."""
    zero, one = torch.zeros(()), torch.ones(())
    return one, _stats(zero, one, torch.full((), math.nan))


class _Clipper(Scaling):
    """Shared in-place entry point of the stateful clippers."""

    def clip_(self, parameters: Parameters, *, nonfinite: str = "propagate") -> ClipStats:
        """Clip the gradients of ``parameters`` in place and update the state."""
        return apply_(self, parameters, nonfinite=nonfinite)  # type: ignore[arg-type]


class AutoClip(_Clipper):
    """Clip the global norm to a percentile of the norm history (Seetharaman et al. 2020).

    Args:
        percentile: in (0, 100]; the paper finds 10 a good default.
        history_size: keep only the last ``history_size`` norms (None: all of them).
        norm_type: the norm of the gradients (2 in the paper).

    Raises:
        TypeError: a number argument is not a number.
        ValueError: `percentile` is outside (0, 100], `history_size` < 1, or `norm_type` is not > 0.

    Example:
        >>> clip = AutoClip(percentile=10)
        >>> clip.state_dict()["count"]
        0
    """

    def __init__(
        self, percentile: float = 10.0, *, history_size: int | None = None, norm_type: float = 2.0
    ) -> None:
        self.percentile = check_float(
            "percentile",
            percentile,
            min_value=0.0,
            max_value=100.0,
            min_inclusive=False,
            hint=" It is a percentile in (0, 100], e.g. 10.",
        )
        self.history_size = (
            None if history_size is None else check_int("history_size", history_size, min_value=1)
        )
        from pellucid.clipping.functional import check_norm_type

        self.norm_type = check_norm_type(norm_type)
        self.count = 0
        self._buffer: torch.Tensor | None = None

    def _ensure(self, device: torch.device) -> torch.Tensor:
        needed = min(self.count + 1, self.history_size or self.count + 1)
        buf = self._buffer
        if buf is None:
            buf = torch.full(
                (max(64, needed),) if self.history_size is None else (self.history_size,),
                math.nan,
                dtype=torch.float64,
                device=device,
            )
        elif buf.device != device:
            buf = buf.to(device)
        if buf.numel() < needed:
            grown = torch.full((2 * buf.numel(),), math.nan, dtype=torch.float64, device=device)
            grown[: buf.numel()] = buf
            buf = grown
        self._buffer = buf
        return buf

    @property
    def history(self) -> torch.Tensor:
        """The norms kept so far (NaN marks a non-finite step), oldest first when unbounded."""
        if self._buffer is None:
            return torch.zeros(0, dtype=torch.float64)
        return self._buffer[: min(self.count, self._buffer.numel())].clone()

    def scale(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], norms: GradNorms | None = None
    ) -> tuple[torch.Tensor, ClipStats]:
        """This step's coefficient for every gradient and its stats (the state moves on)."""
        if not grads:  # a step without gradients is no part of the norm history
            return _no_gradients()
        total = _norms(grads, norms).total(self.norm_type)
        buf = self._ensure(total.device)
        slot = self.count % buf.numel() if self.history_size else self.count
        value = total.detach().to(torch.float64)
        buf[slot] = torch.where(torch.isfinite(value), value, torch.full_like(value, math.nan))
        self.count += 1
        window = buf[: min(self.count, buf.numel())]
        threshold = torch.nanquantile(window, self.percentile / 100.0)
        threshold = torch.where(
            torch.isnan(threshold), torch.full_like(threshold, math.inf), threshold
        )
        coef = torch.clamp(threshold / (value + 1e-6), max=1.0).to(total.dtype)
        return coef, _stats(total, coef, threshold)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: settings, step count and the kept norms (on CPU)."""
        return {
            "percentile": self.percentile,
            "history_size": self.history_size,
            "norm_type": self.norm_type,
            "count": self.count,
            "history": self.history.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (settings are checked to match).

        Raises:
            TypeError: `state` is not a dict.
            ValueError: `state` lacks a key, or holds values of another configuration.
        """
        _check_keys(state, ("percentile", "history_size", "norm_type", "count", "history"))
        if (state["percentile"], state["history_size"]) != (self.percentile, self.history_size):
            raise ValueError(
                "`state` must come from an AutoClip with the same settings; got "
                f"percentile={state['percentile']}, history_size={state['history_size']} for "
                f"percentile={self.percentile}, history_size={self.history_size}."
            )
        history = torch.as_tensor(state["history"], dtype=torch.float64)
        self.count = check_int("count", state["count"], min_value=0)
        size = self.history_size or max(64, 2 * history.numel())
        self._buffer = torch.full((size,), math.nan, dtype=torch.float64)
        self._buffer[: history.numel()] = history


class ZClip(_Clipper):
    """Z-score spike clipping with EMA statistics of the gradient norm (Kumar et al. 2025).

    Args:
        alpha: EMA smoothing in (0, 1) (0.97 in the paper).
        z_thresh: z-score above which a norm counts as a spike (2.5).
        warmup_steps: steps whose norms initialise the mean and variance (25).
        max_norm: an optional fixed bound applied on every step (also during warm-up).
        clip_option: ``"adaptive_scaling"`` (the paper's default) or ``"mean"`` (clip to the
            EMA mean).
        clip_factor: multiplier of the adaptive threshold.
        skip_update_on_spike: leave the EMA alone on spike steps.
        eps: added to the standard deviation.

    Raises:
        TypeError: a number argument is not a number.
        ValueError: a number is out of range (see Args), or `clip_option` is unknown.

    Example:
        >>> ZClip().state_dict()["step"]
        0
    """

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        *,
        warmup_steps: int = 25,
        max_norm: float | None = None,
        clip_option: str = "adaptive_scaling",
        clip_factor: float = 1.0,
        skip_update_on_spike: bool = False,
        eps: float = 1e-6,
    ) -> None:
        self.alpha = check_float(
            "alpha",
            alpha,
            min_value=0.0,
            max_value=1.0,
            min_inclusive=False,
            max_inclusive=False,
            hint=" The paper uses alpha=0.97.",
        )
        self.z_thresh = check_float("z_thresh", z_thresh, min_value=0.0, min_inclusive=False)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, min_value=1)
        self.max_norm = (
            None
            if max_norm is None
            else check_float("max_norm", max_norm, min_value=0.0, min_inclusive=False)
        )
        self.clip_option = check_choice("clip_option", clip_option, ("adaptive_scaling", "mean"))
        self.clip_factor = check_float(
            "clip_factor", clip_factor, min_value=0.0, min_inclusive=False
        )
        self.skip_update_on_spike = bool(skip_update_on_spike)
        self.eps = check_float("eps", eps, min_value=0.0)
        self.step = 0
        self._warmup = torch.full((self.warmup_steps,), math.nan, dtype=torch.float64)
        self.mean = torch.tensor(math.nan, dtype=torch.float64)
        self.var = torch.tensor(math.nan, dtype=torch.float64)

    @property
    def initialized(self) -> bool:
        """Whether the warm-up is over (known on the host: no sync)."""
        return self.step >= self.warmup_steps

    def _bound(self, value: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        if self.max_norm is not None:
            bound = torch.clamp(bound, max=self.max_norm)
        return torch.where(value > bound, bound / (value + 1e-6), torch.ones_like(value))

    def scale(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], norms: GradNorms | None = None
    ) -> tuple[torch.Tensor, ClipStats]:
        """This step's coefficient for every gradient and its stats (the state moves on)."""
        if not grads:  # a step without gradients does not move the statistics
            return _no_gradients()
        total = _norms(grads, norms).total(2.0)
        value = total.detach().to(torch.float64)
        device = value.device
        finite = torch.isfinite(value)
        if self._warmup.device != device:
            self._warmup, self.mean, self.var = (
                t.to(device) for t in (self._warmup, self.mean, self.var)
            )
        if not self.initialized:
            self._warmup[self.step] = torch.where(finite, value, torch.full_like(value, math.nan))
            self.step += 1
            if self.initialized:
                self.mean = torch.nanmean(self._warmup)
                self.var = torch.nanmean((self._warmup - self.mean) ** 2)
            bound = torch.full_like(value, math.inf)
            coef = self._bound(value, bound)
            threshold = torch.full_like(value, self.max_norm if self.max_norm else math.nan)
        else:
            std = self.var.sqrt()
            z = (value - self.mean) / (std + self.eps)
            spike = z > self.z_thresh
            if self.clip_option == "adaptive_scaling":
                adaptive = (
                    self.mean + self.z_thresh * std / (z / self.z_thresh)
                ) * self.clip_factor
            else:
                adaptive = self.mean
            clip_val = torch.where(spike, adaptive, value)
            coef = self._bound(value, clip_val)
            threshold = clip_val if self.max_norm is None else clip_val.clamp(max=self.max_norm)
            update = finite & ~spike if self.skip_update_on_spike else finite
            mean = self.alpha * self.mean + (1 - self.alpha) * clip_val
            var = self.alpha * self.var + (1 - self.alpha) * (clip_val - mean) ** 2
            self.mean = torch.where(update, mean, self.mean)
            self.var = torch.where(update, var, self.var)
            self.step += 1
        coef = coef.to(total.dtype)
        return coef, _stats(total, coef, threshold)

    def state_dict(self) -> dict[str, Any]:
        """Settings, step count, warm-up norms and the EMA mean/variance (on CPU)."""
        return {
            "alpha": self.alpha,
            "z_thresh": self.z_thresh,
            "warmup_steps": self.warmup_steps,
            "max_norm": self.max_norm,
            "clip_option": self.clip_option,
            "clip_factor": self.clip_factor,
            "skip_update_on_spike": self.skip_update_on_spike,
            "eps": self.eps,
            "step": self.step,
            "warmup": self._warmup.cpu().clone(),
            "mean": self.mean.cpu().clone(),
            "var": self.var.cpu().clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; settings are taken from ``state``.

        Raises:
            TypeError: `state` is not a dict.
            ValueError: `state` lacks a key, or holds values out of range.
        """
        _check_keys(state, ("alpha", "z_thresh", "warmup_steps", "step", "warmup", "mean", "var"))
        fresh = ZClip(
            state["alpha"],
            state["z_thresh"],
            warmup_steps=state["warmup_steps"],
            max_norm=state.get("max_norm"),
            clip_option=state.get("clip_option", "adaptive_scaling"),
            clip_factor=state.get("clip_factor", 1.0),
            skip_update_on_spike=state.get("skip_update_on_spike", False),
            eps=state.get("eps", 1e-6),
        )
        fresh.step = check_int("step", state["step"], min_value=0)
        fresh._warmup = torch.as_tensor(state["warmup"], dtype=torch.float64).clone()
        fresh.mean = torch.as_tensor(state["mean"], dtype=torch.float64).clone()
        fresh.var = torch.as_tensor(state["var"], dtype=torch.float64).clone()
        self.__dict__.update(fresh.__dict__)


def _check_keys(state: Any, keys: tuple[str, ...]) -> None:
    if not isinstance(state, dict):
        raise TypeError(f"`state` must be a dict from state_dict(); got {type(state).__name__}.")
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"`state` must hold the keys {', '.join(keys)}; missing {missing}.")
