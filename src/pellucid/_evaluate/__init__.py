"""THE model evaluator: rows -> model -> outputs, scores and gradients.

Every method, metric and inspection tool runs the user's model through this package:

* :mod:`._call`: :class:`Forward` (extra arguments, output selection, the memory-layout
  policy of :mod:`pellucid._kernels`) and :class:`AtLayer`, which evaluates rows standing
  for a layer's output by composition around a Forward;
* :mod:`._prepare`: ``prepare`` (validate, first forward, target resolved once, layer
  capture) and ``broadcast_baseline``;
* :mod:`._chunks`: chunk sizes and the chunked forward loops (``map_chunks``,
  ``block_scores``), bounded in memory by ``batch_size``;
* :mod:`._gradients`: the gradient engine (``input_gradients``, ``path_gradients``,
  ``prepared_gradients``, ``target_scores``);
* :mod:`._memory`: ``max_memory=`` (``"2GB"``) parsed and turned into a ``batch_size`` from
  each method's per-row cost and the model's activations measured on one row.

Rule-based methods wrap the model call (``Forward.with_model``) and the paired DeepLIFT pass
composes a Forward too (``attribution/rules``); the target reduction lives in
:mod:`pellucid._targets`.
"""

from __future__ import annotations

from pellucid._evaluate._call import AtLayer, Evaluates, Forward, select_output
from pellucid._evaluate._chunks import (
    CPU_CHUNK_ELEMENTS,
    CPU_SPATIAL_CHUNK_ELEMENTS,
    DEFAULT_ELEMENT_BUDGET,
    block_scores,
    chunk_rows,
    chunks,
    map_chunks,
    resolve_batch_size,
)
from pellucid._evaluate._gradients import (
    GRAD_BUDGET_FACTOR,
    first_forward_rows,
    grad_batch_size,
    graph_gradient,
    input_gradients,
    path_gradients,
    prepared_gradients,
    scored_gradient,
    target_scores,
)
from pellucid._evaluate._memory import (
    ESTIMATE_FACTOR,
    ROW_COSTS,
    RowCost,
    check_memory_options,
    format_bytes,
    measure_peak,
    memory_batch_size,
    parse_memory,
    pick_batch_size,
    probe_peak,
)
from pellucid._evaluate._prepare import (
    Prepared,
    all_finite,
    broadcast_baseline,
    layer_activations,
    model_failure,
    per_row,
    prepare,
)

__all__ = [
    "model_failure",
    "CPU_CHUNK_ELEMENTS",
    "CPU_SPATIAL_CHUNK_ELEMENTS",
    "DEFAULT_ELEMENT_BUDGET",
    "ESTIMATE_FACTOR",
    "GRAD_BUDGET_FACTOR",
    "ROW_COSTS",
    "RowCost",
    "check_memory_options",
    "format_bytes",
    "measure_peak",
    "memory_batch_size",
    "parse_memory",
    "pick_batch_size",
    "probe_peak",
    "AtLayer",
    "Evaluates",
    "Forward",
    "Prepared",
    "all_finite",
    "block_scores",
    "first_forward_rows",
    "graph_gradient",
    "broadcast_baseline",
    "per_row",
    "chunk_rows",
    "chunks",
    "grad_batch_size",
    "input_gradients",
    "layer_activations",
    "map_chunks",
    "path_gradients",
    "prepare",
    "prepared_gradients",
    "resolve_batch_size",
    "scored_gradient",
    "select_output",
    "target_scores",
]
