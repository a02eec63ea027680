"""The ops to blame when a pruned group is wrong: those torch-pruning treats as element-wise
although they move values across channels, found in the group with the layer that ran them."""

from __future__ import annotations

import re

import torch
import torch_pruning as tp

from pipeline.prune.graph import _build_graph

# grad_fn names (lower case, without the "backward" suffix) of ops torch-pruning treats as
# element-wise that are not: they move values across the channel dimension
_CHANNEL_MIXING = (
    "roll",
    "flip",
    "rot90",
    "gather",
    "indexselect",
    "index",
    "take",
    "sort",
    "topk",
    "cumsum",
    "cumprod",
    "pixelshuffle",
    "pixelunshuffle",
    "channelshuffle",
    "scatter",
    "fft",
    "cross",
    "argsort",
)
# grad_fn names (lower case, without the "backward" suffix) of ops torch-pruning treats as
# element-wise that are not: they move values across the channel dimension
_CHANNEL_MIXING = (
    "roll",
    "flip",
    "rot90",
    "gather",
    "indexselect",
    "index",
    "take",
    "sort",
    "topk",
    "cumsum",
    "cumprod",
    "pixelshuffle",
    "pixelunshuffle",
    "channelshuffle",
    "scatter",
    "fft",
    "cross",
    "argsort",
)
# ops known to keep channels apart (everything else is listed as a suspect in an error)
_CHANNEL_LOCAL = (
    "add",
    "sub",
    "mul",
    "div",
    "relu",
    "hardtanh",
    "hardswish",
    "hardsigmoid",
    "sigmoid",
    "tanh",
    "gelu",
    "silu",
    "elu",
    "leakyrelu",
    "clamp",
    "neg",
    "exp",
    "log",
    "pow",
    "sqrt",
    "rsqrt",
    "abs",
    "mean",
    "sum",
    "maxpool",
    "avgpool",
    "adaptiveavgpool",
    "adaptivemaxpool",
    "clone",
    "transpose",
    "permute",
    "unsqueeze",
    "squeeze",
    "t",
    "mm",
    "bmm",
    "addmm",
    "softmax",
    "logsoftmax",
    "dropout",
    "nativebatchnorm",
    "cudnnbatchnorm",
    "nativelayernorm",
    "convolution",
    "view",
    "reshape",
    "unsafeview",
    "expand",
    "slice",
    "cat",
    "split",
    "splitwithsizes",
    "unbind",
    "constantpadnd",
    "copy",
    "tocopy",
    "alias",
    "maximum",
    "minimum",
    "where",
    "mish",
    "softplus",
    "max",
    "min",
)


def _suspects(owners, dg, entry, mixing_only: bool) -> list[str]:
    """Ops in the entry's group that torch-pruning treats as element-wise, with their layer."""
    module = dict(dg.model.named_modules())[entry[0]]
    pruner = dg.get_pruner_of_module(module)
    fn = pruner.prune_out_channels if entry[1] else pruner.prune_in_channels
    group = dg.get_pruning_group(module, fn, entry[2])
    found = []
    for dep, _ in group:
        node = dep.target
        if not isinstance(node.module, tp.ops._ElementWiseOp):
            continue
        gf = node.grad_fn
        op = type(gf).__name__
        custom = isinstance(gf, torch.autograd.function.BackwardCFunction)
        base = re.sub(r"backward\d*$", "", op.lower())
        if custom:
            what = f"custom autograd Function {op.removesuffix('Backward')}"
        elif base in _CHANNEL_MIXING or (not mixing_only and base not in _CHANNEL_LOCAL):
            what = f"torch.{base}" if base in _CHANNEL_MIXING else op
        else:
            continue
        layer = owners.get(gf, "")
        item = f"{what} in layer {layer!r}" if layer else f"{what} in the model's forward"
        if item not in found:
            found.append(item)
    return found


def _graph_with_owners(m, example):
    """Build the dependency graph while recording which module's forward made each grad_fn."""
    owners: dict = {}

    def claim(name):
        def hook(mod, inp, out):
            stack = [t.grad_fn for t in _tensors(out) if t.grad_fn is not None]
            while stack:
                gf = stack.pop()
                if gf in owners:
                    continue
                owners[gf] = name
                stack.extend(
                    f
                    for f, _ in getattr(gf, "next_functions", ())
                    if f is not None and "AccumulateGrad" not in type(f).__name__
                )

        return hook

    handles = [mod.register_forward_hook(claim(n)) for n, mod in m.named_modules()]
    try:
        dg = _build_graph(m, example)
    finally:
        for h in handles:
            h.remove()
    return owners, dg


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []
