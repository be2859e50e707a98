"""The model-state guard: whatever happens inside, the model comes back as it was.

Explaining or measuring a model must not change it. ``model_guard`` records the train/eval
flag of every submodule, every parameter's ``requires_grad`` and ``.grad`` object, and the
keys of every hook dictionary, the buffer objects and the tensors that forward pre-hooks
cache on their module (a pruned ``weight``), and restores all of them on exit, also when
the body raises (under ``torch.inference_mode`` a cache would otherwise come back as an
inference tensor that the user's next backward refuses);
an existing ``.grad`` whose values were changed in place is reported as an error.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pellucid._warnings import TrainingModeWarning

__all__ = [
    "ModelSnapshot",
    "freeze_parameters",
    "has_mode_dependent_layers",
    "model_guard",
    "module_list",
]

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)

_MODE_DEPENDENT = (
    nn.modules.dropout._DropoutNd,
    nn.modules.batchnorm._BatchNorm,
    nn.AlphaDropout,
)


def has_mode_dependent_layers(model: nn.Module) -> bool:
    """True when the model has dropout or batch-norm layers (output depends on train/eval)."""
    return any(isinstance(m, _MODE_DEPENDENT) for m in model.modules())


class ModelSnapshot:
    """What ``model_guard`` restores: modes, flags, grads, hooks and BN running stats."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        modules = module_list(model)
        self.modes = [(m, m.training) for m in modules]
        self.params: list[tuple[nn.Parameter, bool, torch.Tensor | None]] = []
        # In training mode a forward pass updates batch-norm running statistics in place;
        # keep copies of the buffers of modules in training mode so they come back exactly.
        # (In eval mode nothing writes them, and nothing is copied.)
        self.buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        # A forward may also replace tensors it caches on a module: torch's pruning,
        # weight_norm and spectral_norm pre-hooks store ``weight = weight_orig * mask`` as a
        # plain attribute, and a forward may (re)register a cache buffer (rotary tables).
        # Run under ``torch.inference_mode`` they would come back as inference tensors that
        # the user's next backward refuses, so the objects themselves are put back.
        self.buffer_dicts: list[tuple[nn.Module, dict[str, torch.Tensor | None]]] = []
        self.cached: list[tuple[nn.Module, str, torch.Tensor]] = []
        for m in modules:  # one walk for all of it (it runs on every call of every method)
            state = m.__dict__
            for p in state["_parameters"].values():
                if p is not None:
                    self.params.append((p, p.requires_grad, p.grad))
            buffers = state["_buffers"]
            self.buffer_dicts.append((m, dict(buffers)))
            if buffers and m.training:
                self.buffers += [(b, b.detach().clone()) for b in buffers.values() if b is not None]
            if state.get("_forward_pre_hooks") or state.get("_forward_pre_hooks_with_kwargs"):
                self.cached += [(m, k, v) for k, v in state.items() if isinstance(v, torch.Tensor)]
        # an existing .grad changed in place keeps its identity: its version counter tells
        self.grad_versions = [(g, g._version) for _, _, g in self.params if g is not None]
        # Every hook registered through torch's ``register_*`` methods is keyed by a
        # ``RemovableHandle`` id drawn from one global counter: the hooks added inside the
        # guard are exactly those whose key is at least the counter's value now. This
        # avoids copying every hook dictionary of every module on entry.
        self.first_new_hook = RemovableHandle.next_id

    def restore(self) -> None:
        for module, training in self.modes:
            if module.training != training:
                module.training = training
        for param, requires_grad, grad in self.params:
            if param.requires_grad != requires_grad:
                param.requires_grad_(requires_grad)
            if param.grad is not grad:
                param.grad = grad
        if self.buffers:
            with torch.no_grad():
                for buffer, saved in self.buffers:
                    buffer.copy_(saved)
        _restore_tensors(self.buffer_dicts, self.cached)
        first = self.first_new_hook
        if RemovableHandle.next_id == first:  # no handle was made inside: no hook added
            return
        for module, _ in self.modes:
            state = module.__dict__
            for attr in _HOOK_DICTS:
                current = state.get(attr)
                if current:
                    for key in [k for k in current if isinstance(k, int) and k >= first]:
                        del current[key]

    def check_grads(self) -> None:
        """Raise when a ``.grad`` that existed on entry was changed in place (its values
        cannot be restored): a method must take gradients with ``torch.autograd.grad``."""
        changed = sum(1 for g, version in self.grad_versions if g._version != version)
        if changed:
            raise RuntimeError(
                f"pellucid changed the values of {changed} existing `.grad` tensor(s) of the "
                "model in place; please report this bug."
            )


def _restore_tensors(
    buffer_dicts: list[tuple[nn.Module, dict[str, torch.Tensor | None]]],
    cached: list[tuple[nn.Module, str, torch.Tensor]],
) -> None:
    """Put back the buffer objects (dropping buffers added inside) and cached tensors."""
    for module, saved in buffer_dicts:
        current = module._buffers
        if not current and not saved:
            continue
        if len(current) == len(saved) and _same_objects(current, saved):
            continue
        for key in [k for k in current if k not in saved]:
            del current[key]
            module._non_persistent_buffers_set.discard(key)
        current.update(saved)
    for module, key, value in cached:
        if module.__dict__.get(key) is not value:
            module.__dict__[key] = value


def _same_objects(current: dict[str, Any], saved: dict[str, Any]) -> bool:
    for key, value in saved.items():
        if current.get(key, 0) is not value:
            return False
    return True


def _refuse_meta(snapshot: ModelSnapshot) -> None:
    """A model on the ``meta`` device has shapes but no values: nothing can run on it."""
    for p, _, _ in snapshot.params:
        if p.is_meta:
            raise ValueError(
                "`model` must hold real weights; got parameters on the meta device (shapes "
                "without values). Materialize it first, e.g. `model.to_empty(device='cpu')` "
                "then `model.load_state_dict(state)` (or `load_state_dict(state, assign=True)`)."
            )


def module_list(model: nn.Module) -> list[nn.Module]:
    """``list(model.modules())`` (same order, shared modules once), without building names."""
    found: list[nn.Module] = []
    seen: set[int] = set()
    stack: list[nn.Module | None] = [model]
    while stack:  # depth first, children in order: a loop, not a call per module
        module = stack.pop()
        if module is None or id(module) in seen:
            continue
        seen.add(id(module))
        found.append(module)
        stack.extend(reversed(module._modules.values()))
    return found


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside pellucid (and
    outside ``contextlib``), i.e. at the user's call, however deep the method nests."""
    frame = sys._getframe(1)  # the function that will call warnings.warn: stacklevel 1
    level = 1
    while frame.f_back is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE_DIR)
        or frame.f_code.co_filename.endswith("contextlib.py")
    ):
        frame = frame.f_back
        level += 1
    return level


@contextmanager
def model_guard(
    model: Any,
    *,
    eval_mode: bool | None = None,
    method: str = "this method",
    allow_meta: bool = False,
) -> Iterator[Any]:
    """Run the body with ``model`` protected; restore its state on exit.

    Args:
        model: the user's model; non-``nn.Module`` callables pass through untouched.
        eval_mode: ``True`` runs the body in eval mode; ``None`` keeps the current mode and
            warns when the model is in training mode with dropout or batch norm (the
            explanation would depend on randomness or on the batch); ``False`` keeps the
            mode silently.
        method: named in the warning.
        allow_meta: accept a model on the ``meta`` device (shape-only work such as counting
            MACs); otherwise it is refused with the fix.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout()).train()
        >>> with model_guard(net, eval_mode=True):
        ...     net.training
        False
        >>> net.training
        True
    """
    if not isinstance(model, nn.Module):
        yield model
        return
    snapshot = ModelSnapshot(model)
    if not allow_meta:
        _refuse_meta(snapshot)
    guarded = _guarded()
    outer = guarded.get(id(model))
    guarded[id(model)] = snapshot
    try:
        if eval_mode:
            model.eval()
        elif eval_mode is None and model.training and has_mode_dependent_layers(model):
            warnings.warn(
                f"The model is in training mode and has dropout or batch-norm layers, so "
                f"{method} depends on randomness or on the batch. Call `model.eval()` first, "
                "or pass `eval_mode=True` to explain it in eval mode for this call only.",
                TrainingModeWarning,
                stacklevel=_user_stacklevel(),
            )
        yield model
    finally:
        if outer is None:
            guarded.pop(id(model), None)
        else:
            guarded[id(model)] = outer
        snapshot.restore()
    snapshot.check_grads()


_LOCAL = threading.local()


def _guarded() -> dict[int, ModelSnapshot]:
    """This thread's guarded models (by id) and their innermost snapshot."""
    guarded: dict[int, ModelSnapshot] | None = getattr(_LOCAL, "guarded", None)
    if guarded is None:
        guarded = _LOCAL.guarded = {}
    return guarded


def freeze_parameters(model: Any) -> None:
    """Switch off ``requires_grad`` of every parameter, so that only tensors computed from
    the explained rows require grad. Inside ``model_guard`` (which restores the flags) the
    guard's list of parameters is used: no second walk over the modules."""
    if not isinstance(model, nn.Module):
        return
    snapshot = _guarded().get(id(model))
    if snapshot is not None and snapshot.model is model:
        for param, _, _ in snapshot.params:
            if param.requires_grad:
                param.requires_grad_(False)
        return
    for module in module_list(model):
        for value in module._parameters.values():
            if value is not None and value.requires_grad:
                value.requires_grad_(False)


def parameters_fingerprint(model: nn.Module) -> list[torch.Tensor]:
    """Detached clones of every parameter and buffer (used by tests and sanity checks)."""
    return [t.detach().clone() for t in (*model.parameters(), *model.buffers())]
