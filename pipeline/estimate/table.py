"""`layer_table`: a model's per-layer counts as a report table, with totals as figures."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.estimate.count import Layer, count_layers
from pipeline.report import fig

_COLUMNS = [
    "name",
    "kind",
    "module",
    "macs",
    "ops",
    "weight_bytes",
    "act_in_bytes",
    "act_out_bytes",
    "bytes_moved",
    "fused_into",
    "gemm_m",
    "gemm_n",
    "gemm_k",
]
_UNITS = {
    "macs": "MAC",
    "ops": "op",
    "weight_bytes": "B",
    "act_in_bytes": "B",
    "act_out_bytes": "B",
    "bytes_moved": "B",
}
_NOTES = [
    (
        "MACs: conv, linear and matmul multiply-accumulates; ops: bias adds, batch/layer "
        "norm (2 per element), activations and elementwise ops (1 per output element), "
        "pooling and means (1 per input element), as torch-pruning counts them"
    ),
    (
        "kind 'fused': a BatchNorm or ReLU/ReLU6 that the XNNPACK lowering folds into the "
        "conv/linear/add before it; it costs no time or bytes in the estimate"
    ),
    (
        "functional ops (residual adds, matmuls, multiplies in a container's forward) are "
        "counted from the aten ops they dispatch; ops in custom C++/Triton kernels are not"
    ),
    (
        "activation bytes assume every element is stored at the precision's width; an int8 "
        "program may keep some ops (softmax, layer norm) in fp32"
    ),
]


def _totals(layers: list[Layer], tot_on: str) -> dict:
    run = [l for l in layers if l.kind != "fused"]
    return {
        "macs": fig(sum(l.macs for l in layers), "MAC", "counted", tot_on),
        "other_ops": fig(sum(l.ops for l in layers), "op", "counted", tot_on),
        "weight_bytes": fig(
            sum(l.weight_bytes for l in run),
            "B",
            "counted",
            tot_on + " (weights of layers that run; folded BN parameters "
            "are in the conv they fold into)",
        ),
        "activation_bytes": fig(
            sum(l.act_out_bytes for l in run), "B", "counted", tot_on + ", every layer output once"
        ),
        "bytes_moved": fig(
            sum(l.bytes_moved for l in run),
            "B",
            "counted",
            tot_on + ", weights + inputs + outputs of every layer that runs",
        ),
        "layers": fig(len(run), "layers", "counted", tot_on + ", BN/ReLU folded away not counted"),
    }


def layer_table(model: nn.Module, example: torch.Tensor, precision: str = "fp32") -> dict:
    """Per-layer counts as one table (source "counted", units in the header) plus totals as
    figures. Rows: name, kind, module, macs, ops, weight_bytes, act_in_bytes, act_out_bytes,
    bytes_moved, fused_into, gemm_m/n/k (the GEMM a conv/linear computes)."""
    layers = count_layers(model, example, precision)
    on = f"{type(model).__name__}, input {tuple(example.shape)}, {precision}, per layer"
    tot_on = f"{type(model).__name__}, input {tuple(example.shape)}, {precision}, sum over layers"
    # copies of the constants, as the caller owns the table
    return {
        "source": "counted",
        "on": on,
        "units": dict(_UNITS),
        "columns": list(_COLUMNS),
        "rows": [[l.row()[c] for c in _COLUMNS] for l in layers],
        "totals": _totals(layers, tot_on),
        "notes": list(_NOTES),
    }
