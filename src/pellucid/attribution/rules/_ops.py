"""Names of the torch operations the rule engine knows, grouped by how gradients treat them.

The engine sees operations by name (``torch.relu``, ``F.relu``, ``x.relu()`` and
``nn.ReLU`` all arrive as ``relu``). The groups below say which operations are linear or
structural (the ordinary gradient is every method's rule), which are products, and which
are the non-linear families the methods' rule tables give rules to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "ACTIVATIONS",
    "AVG_POOL_OPS",
    "BILINEAR_OPS",
    "DENOMINATOR_OPS",
    "DROPOUT_OPS",
    "MAX_POOL_OPS",
    "PASS_OPS",
    "QUERY_OPS",
    "RELU_OPS",
    "SCALE_OPS",
    "WEIGHTED_OPS",
    "ZERO_FIXED_ACTIVATIONS",
    "is_inplace",
    "op_name",
]

#: Linear or structural operations: the ordinary gradient is the right one for every method.
PASS_OPS = frozenset(
    """add __add__ __radd__ __iadd__ add_ sub __sub__ __rsub__ __isub__ sub_ rsub neg __neg__
    neg_ negative positive __pos__ flatten unflatten reshape view view_as permute transpose t
    contiguous T mT squeeze unsqueeze __getitem__ cat concat concatenate stack hstack vstack split
    chunk narrow select expand expand_as repeat clone to type float double half sum mean pad
    identity movedim swapaxes unbind tensor_split split_with_sizes flip roll index_select
    gather __setitem__ _reshape_alias zero_pad2d constant_pad_nd repeat_interleave""".split()
)
#: Questions about a tensor's layout, answered with numbers, never with a tensor.
QUERY_OPS = frozenset(
    """dim ndimension size numel nelement stride is_contiguous is_floating_point element_size
    __len__""".split()
)
#: Products and quotients: linear when only one operand (the numerator) depends on inputs.
SCALE_OPS = frozenset(
    """mul __mul__ __rmul__ __imul__ mul_ multiply div __truediv__ __itruediv__ div_ divide
    true_divide matmul __matmul__ __rmatmul__ mm bmm""".split()
)
DENOMINATOR_OPS = frozenset("div __truediv__ __itruediv__ div_ divide true_divide".split())
#: Out-of-place products that are bilinear in their first two arguments (both may depend
#: on the inputs: attention's ``q @ k^T`` and ``weights @ v``, gating ``x * gate``).
BILINEAR_OPS = frozenset(
    "mul __mul__ __rmul__ multiply matmul __matmul__ __rmatmul__ mm bmm".split()
)
#: Dropout is the identity when not training.
DROPOUT_OPS = frozenset(
    "dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout".split()
)

RELU_OPS = frozenset({"relu", "relu_"})
#: Element-wise non-linearities (DeepLIFT's rescale rule applies to all of them).
ACTIVATIONS = frozenset(
    """relu relu_ sigmoid sigmoid_ tanh tanh_ elu elu_ leaky_relu leaky_relu_ softplus gelu
    silu silu_ selu selu_ celu celu_ relu6 hardtanh hardtanh_ mish hardswish hardsigmoid
    logsigmoid""".split()
)
#: Element-wise non-linearities with ``f(0) = 0`` whose output has the sign of their input
#: where it is not 0 (LRP passes relevance through them unchanged: ``R_x = R_y``).
ZERO_FIXED_ACTIVATIONS = frozenset(
    "relu relu_ gelu silu silu_ relu6 hardtanh hardtanh_ hardswish elu elu_ leaky_relu "
    "leaky_relu_ tanh tanh_ mish selu selu_ celu celu_".split()
)
WEIGHTED_OPS = frozenset({"linear", "conv1d", "conv2d", "conv3d"})
AVG_POOL_OPS = frozenset(
    """avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d
    adaptive_avg_pool3d""".split()
)
MAX_POOL_OPS = frozenset({"max_pool1d", "max_pool2d", "max_pool3d"})


def is_inplace(name: str, kwargs: Mapping[str, Any]) -> bool:
    """Whether the call ``name(..., **kwargs)`` changes its first argument."""
    return bool(kwargs.get("inplace", False)) or (name.endswith("_") and not name.startswith("__"))


#: Operation names by function object (functions and builtins are long-lived; the bound
#: ``__get__`` wrappers of tensor properties are made anew on every access: not cached).
_NAMES: dict[Any, str] = {}
_CACHEABLE = (type(torch.relu), type(is_inplace), type(torch.Tensor.add))


def op_name(func: Any) -> str:
    """The name the rule tables use for ``func``."""
    name = _NAMES.get(func) if type(func) in _CACHEABLE else None
    if name is not None:
        return name
    name = getattr(func, "__name__", None) or repr(func)
    if name == "__get__":  # a tensor property such as x.T: name it by the property
        return str(getattr(getattr(func, "__self__", None), "__name__", name))
    if type(func) in _CACHEABLE:
        _NAMES[func] = name
    return name
