"""Token-id inputs for the perturbation methods: a removed token becomes ``mask_token``.

Occlusion, feature ablation, LIME and KernelSHAP only ever *replace* input values, so they
explain token ids directly, without going through an embedding: a player that is off takes
the ``mask_token`` id (the tokenizer's ``[MASK]``, ``<unk>`` or pad id; a tensor gives one
id per position, e.g. the special tokens themselves where ``[CLS]``/``[SEP]`` must stay).

The methods' engines mix inputs and references with 0/1 masks in floating point, so the
ids travel as float64 (exact for ids below 2**53) and :class:`TokenRows` turns every
perturbed row back into the inputs' integer dtype just before the model sees it: no id is
ever interpolated. Gradient and path methods refuse integer inputs at the front door
(``_validation.check_tensor``) and point to ``layer=``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from pellucid._evaluate import Evaluates, Prepared, per_row
from pellucid._shell import Run
from pellucid._validation import describe_value

__all__ = ["TokenRows", "TokenRun", "check_token_call", "token_run"]


class TokenRows:
    """Evaluates float rows of token ids by handing the model exact integer ids."""

    def __init__(self, base: Evaluates, dtype: torch.dtype) -> None:
        self.base, self.dtype = base, dtype
        self.n_examples = base.n_examples

    @property
    def aligned(self) -> bool:
        return self.base.aligned

    def expect(self, rows: int) -> None:
        self.base.expect(rows)

    def __call__(self, x: torch.Tensor, example_index: torch.Tensor | None = None) -> torch.Tensor:
        return self.base(x.round().to(self.dtype), example_index)


def _vocabulary(model: Any) -> tuple[int, str] | None:
    """(size, name) of the largest ``nn.Embedding`` of the model, when it has one."""
    if not isinstance(model, nn.Module):
        return None
    found = [(m.num_embeddings, n) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    return max(found) if found else None


def _check_ids(name: str, ids: torch.Tensor, vocabulary: tuple[int, str] | None) -> None:
    low = int(ids.min())
    if low < 0:
        where = tuple(torch.nonzero(ids == low)[0].tolist())
        raise ValueError(f"`{name}` must hold token ids >= 0; got {low} at index {where}.")
    if vocabulary is not None:
        high, (size, layer) = int(ids.max()), vocabulary
        if high >= size:
            where = tuple(torch.nonzero(ids == high)[0].tolist())
            raise ValueError(
                f"`{name}` must hold token ids below {size}, the size of the model's embedding "
                f"{layer!r}; got {high} at index {where}."
            )


def check_token_call(
    method: str,
    model: Any,
    inputs: Any,
    mask_token: Any,
    *,
    baseline: Any = None,
    background: Any = None,
) -> bool:
    """Whether ``inputs`` are token ids; refuses a bad combination before anything runs.

    Raises:
        TypeError: integer inputs without ``mask_token`` (or ``background``), bool inputs,
            or a ``mask_token`` that is not an integer (tensor).
        ValueError: ``mask_token`` with floating-point inputs, ``baseline`` with token ids,
            or an id below 0 or beyond the model's embedding.
    """
    if not isinstance(inputs, torch.Tensor) or inputs.is_floating_point() or inputs.is_complex():
        if mask_token is not None:
            raise ValueError(
                f"`mask_token` replaces removed tokens of token-id (integer) `inputs`; got "
                f"{describe_value(inputs)}. Use `baseline=` for real-valued features."
            )
        return False
    if inputs.dtype == torch.bool:
        raise TypeError(
            f"`inputs` must be floating-point features or integer token ids; got dtype "
            f"{inputs.dtype}. Convert with `.float()` or `.long()`."
        )
    if mask_token is None and background is None:
        raise TypeError(
            f"`mask_token` must be given for token-id `inputs` (dtype {inputs.dtype}) of "
            f"{method}: the id a removed token takes (the tokenizer's mask, unk or pad id); "
            "got None. Convert real-valued features with `.float()` instead."
        )
    if baseline is not None:
        raise ValueError(
            "`baseline` is the reference of real-valued inputs; token-id `inputs` take "
            f"`mask_token=` (an id) instead; got baseline={describe_value(baseline)}."
        )
    vocabulary = _vocabulary(model)
    if inputs.numel():
        _check_ids("inputs", inputs, vocabulary)
    if mask_token is not None:
        _check_ids("mask_token", _mask_tensor(mask_token, inputs), vocabulary)
    return True


def _mask_tensor(mask_token: Any, inputs: torch.Tensor) -> torch.Tensor:
    """``mask_token`` as integer ids of the inputs' full shape."""
    if isinstance(mask_token, bool) or not isinstance(mask_token, int | torch.Tensor):
        raise TypeError(
            "`mask_token` must be an integer token id or an integer tensor of ids (one example "
            f"or one per example); got {describe_value(mask_token)}."
        )
    if isinstance(mask_token, int):
        return torch.full_like(inputs, mask_token)
    if mask_token.is_floating_point() or mask_token.is_complex() or mask_token.dtype == torch.bool:
        raise TypeError(f"`mask_token` must hold integer token ids; got dtype {mask_token.dtype}.")
    ids = per_row(mask_token, inputs)
    if ids is None:
        raise ValueError(
            f"`mask_token` of shape {tuple(mask_token.shape)} must be one id, one example "
            f"{tuple(inputs.shape[1:])} or one per example {tuple(inputs.shape)}."
        )
    return ids


class TokenRun(Run):
    """The method's :class:`Run` on float ids; results go back to the outer run as ids."""

    def __init__(self, outer: Run, prep: Prepared, ids: torch.Tensor, mask_token: Any) -> None:
        super().__init__(outer.name, prep, outer.batch_size)
        self.outer, self.ids, self.mask_token = outer, ids, mask_token

    def result(
        self,
        attributions: torch.Tensor,
        *,
        params: Any = None,
        extras: Any = None,
        baseline: torch.Tensor | None = None,
        inputs: torch.Tensor | None = None,
    ) -> None:
        out = self.outer.prep.output
        dtype = out.dtype if out.is_floating_point() else torch.get_default_dtype()
        self.outer.result(
            attributions.to(dtype),
            params={**dict(params or {}), "mask_token": self.mask_token},
            extras=extras,
            baseline=None if baseline is None else baseline.round().to(self.ids.dtype),
            inputs=self.ids if inputs is None else inputs,
        )

    @property
    def explanation(self) -> Any:
        return self.outer.explanation


def token_run(run: Run, mask_token: Any) -> tuple[Run, torch.Tensor | None]:
    """``(run on float64 ids, the mask ids as a float64 baseline)``; the run's rows reach the
    model as the original integer ids. ``mask_token`` None (a background is used): no baseline."""
    ids = run.prep.inputs
    mask = None if mask_token is None else _mask_tensor(mask_token, ids)
    prep = replace(
        run.prep,
        inputs=ids.to(torch.float64),
        forward=TokenRows(run.prep.forward, ids.dtype),
    )
    return TokenRun(run, prep, ids, mask_token), None if mask is None else mask.to(torch.float64)
