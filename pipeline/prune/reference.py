"""The reference a pruned model is checked against: the dense model with the channels a
history entry removes zeroed where they are produced and where they are consumed."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from pipeline.prune.graph import _attention_modules

_REL_TOL = 1e-4  # exactness check: max |diff| / max |reference|
_GRAPH_OPS = (
    tp.ops._ElementWiseOp,
    tp.ops._ConcatOp,
    tp.ops._SplitOp,
    tp.ops._ReshapeOp,
    tp.ops._SliceOp,
    tp.ops._ExpandOp,
    tp.ops._UnbindOp,
    tp.ops._OutputOp,
)


def _same(a, b, example) -> bool:
    x = torch.randn(example.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ya, yb = a(x), b(x)
    scale = float(ya.abs().max()) or 1.0
    return ya.shape == yb.shape and float((ya - yb).abs().max()) <= _REL_TOL * scale


def _fix_heads(m, dense):
    """Head count from the pruned qkv width: heads are removed whole, each keeps its width in
    `dense` (read there: not every attention has a head_dim, e.g. timm's cross-covariance)."""
    before = _attention_modules(dense)
    for name, a in _attention_modules(m).items():
        per_head = before[name].qkv.out_features // before[name].num_heads  # 3 x head size
        a.num_heads = a.qkv.out_features // per_head


def _zero_entry(dg, entry, dry_run=False) -> list[str]:
    """Zero, in the dense model, the channels a history entry removes, where they are produced
    and where they are consumed. Returns the layers of the group that are not channel-local
    (norms over channels, grouped conv, unknown modules), as "name (Type)": a group with any
    cannot be checked so."""
    name, is_out, idxs = entry
    names = {m: n for n, m in dg.model.named_modules()}
    module = dict(dg.model.named_modules())[name]
    pruner = dg.get_pruner_of_module(module)
    fn = pruner.prune_out_channels if is_out else pruner.prune_in_channels
    group = dg.get_pruning_group(module, fn, idxs)
    blocking = []
    with torch.no_grad():
        for dep, ix in group:
            t = dep.target.module
            ix = [int(getattr(i, "idx", i)) for i in ix]
            out = dg.is_out_channel_pruning_fn(dep.handler)
            if isinstance(t, _GRAPH_OPS):
                continue  # the graph's own op nodes (element-wise, reshape, concat...): no weights
            if isinstance(t, nn.Parameter):
                if not dry_run:
                    t.data.index_fill_(dep.target.pruning_dim, torch.tensor(ix), 0.0)
            elif isinstance(t, nn.modules.conv._ConvNd):
                dw = t.groups == t.in_channels == t.out_channels
                if t.groups > 1 and not dw and t.transposed:
                    blocking.append(t)
                elif not dry_run:
                    _zero_conv(t, ix, out, dw)
            elif isinstance(t, nn.Linear):
                if not dry_run:
                    if out:
                        t.weight[ix] = 0
                        if t.bias is not None:
                            t.bias[ix] = 0
                    else:
                        t.weight[:, ix] = 0
            elif isinstance(t, nn.modules.batchnorm._BatchNorm):
                if not t.affine:
                    blocking.append(t)
                elif not dry_run:
                    t.weight[ix] = 0
                    t.bias[ix] = 0
            elif isinstance(t, (nn.PReLU,)):
                pass  # PReLU(0) == 0
            elif isinstance(t, nn.Module):
                blocking.append(t)  # layer/group norm, attention, LSTM, embedding, ...
    return [f"{names[t]} ({type(t).__name__})" for t in dict.fromkeys(blocking)]


def _zero_conv(t, ix, out: bool, dw: bool) -> None:
    """Zero a conv's output channels `ix`, or its input channels `ix`: in a grouped conv,
    input channel i is column i % (in/groups) of the outputs of group i // (in/groups)."""
    w = t.weight
    if t.transposed:  # weight (in, out/groups, ...)
        if out:
            w[:, ix] = 0
        else:
            w[ix] = 0
    elif out or dw:
        w[ix] = 0
    elif t.groups > 1:
        per_in, per_out = t.in_channels // t.groups, t.out_channels // t.groups
        for i in ix:
            g, col = divmod(i, per_in)
            w[g * per_out : (g + 1) * per_out, col] = 0
    else:
        w[:, ix] = 0
    if t.bias is not None and (out or dw):
        t.bias[ix] = 0
