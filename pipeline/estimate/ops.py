"""What one aten op costs: its layer kind, MACs, other arithmetic and GEMM shape."""

from __future__ import annotations

import math

import torch

# aten ops that only change a tensor's view or metadata: no arithmetic, no bytes
VIEW_OPS = {
    "view",
    "_unsafe_view",
    "reshape",
    "flatten",
    "transpose",
    "t",
    "permute",
    "expand",
    "unsqueeze",
    "squeeze",
    "slice",
    "select",
    "detach",
    "alias",
    "as_strided",
    "split",
    "split_with_sizes",
    "unbind",
    "chunk",
    "narrow",
    "view_as",
    "expand_as",
    "lift_fresh",
    "_reshape_alias",
    "contiguous",
    "dropout",
    "feature_dropout",
    "unflatten",
    # allocation and bookkeeping, no arithmetic
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "resize_",
    "_local_scalar_dense",
    "lift_fresh_copy",
    "scalar_tensor",
    "item",
    "is_nonzero",
}
_CONV_OPS = {"convolution", "_convolution", "conv2d", "conv1d", "mkldnn_convolution"}
_MM_OPS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_mkldnn_linear"}
_POOL_OPS = {
    "max_pool2d",
    "max_pool2d_with_indices",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "_adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "mean",
    "sum",
    "amax",
    "max_pool1d",
    "avg_pool1d",
    "_adaptive_avg_pool1d",
}
_ADD_OPS = {"add", "add_", "sub", "sub_"}
_NORM_OPS = {
    "_native_batch_norm_legit_no_training",
    "native_batch_norm",
    "batch_norm",
    "_native_batch_norm_legit",
    "native_layer_norm",
    "layer_norm",
    "group_norm",
    "native_group_norm",
}
# attention in one op (timm and torch.nn.MultiheadAttention call it): two batched GEMMs
_SDPA_OPS = {
    "scaled_dot_product_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_attention_math",
}
# ops that only move data (concatenate, copy a transposed view, pad): kind "move", memory traffic
# and no arithmetic (ShuffleNet's channel shuffle is a transpose + clone)
_MOVE_OPS = {
    "cat",
    "clone",
    "copy",
    "copy_",
    "_to_copy",
    "constant_pad_nd",
    "pixel_shuffle",
    "pixel_unshuffle",
    "channel_shuffle",
    "native_channel_shuffle",
    "stack",
    "roll",
}
# ReLU-like ops: kind "act", which the XNNPACK lowering may fold into the layer before (count.py)
_ACT_OPS = {"relu", "relu_", "hardtanh", "hardtanh_", "clamp", "clamp_", "threshold"}


def op_name(func) -> str:
    return func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)


def tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from tensors(y)


def op_cost(op: str, args, kwargs, out) -> tuple[str, int, int, tuple]:
    """(kind, MACs, other ops, (M, N, K) of the GEMM or ()) of one aten op."""
    outs = list(tensors(out))
    n_out = sum(t.numel() for t in outs)
    if op in _CONV_OPS:
        x, w = args[0], args[1]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        groups = args[8] if len(args) > 8 else kwargs.get("groups", 1)
        k = math.prod(w.shape[2:])
        macs = n_out * w.shape[1] * k
        cin = x.shape[1]
        stride = args[3] if len(args) > 3 else kwargs.get("stride", [1])
        if groups == cin and cin > 1 and w.shape[1] == 1:
            kind = "dwconv"
        elif k == 1 and groups == 1 and all(s == 1 for s in stride):
            kind = "pwconv"  # 1x1, stride 1: XNNPACK runs it as a GEMM ("Fully Connected")
        else:
            kind = "conv"
        n = w.shape[0]
        return kind, macs, (n_out if bias is not None else 0), (n_out // n, n, w.shape[1] * k)
    if op in _MM_OPS:
        a = args[1] if op in ("addmm", "baddbmm") else args[0]
        k = a.shape[-1]  # (.., K) x (K, N), or (N, K)^T for linear
        macs = n_out * k
        bias_ops = (
            n_out
            if op in ("addmm", "baddbmm")
            or (op == "linear" and len(args) > 2 and args[2] is not None)
            else 0
        )
        n = outs[0].shape[-1]
        return "linear", macs, bias_ops, (n_out // n, n, k)
    if op in _SDPA_OPS:
        return _sdpa_cost(args)
    if op in _POOL_OPS:
        return "pool", 0, args[0].numel(), ()
    if op in _NORM_OPS:
        x = args[0]
        affine = any(isinstance(a, torch.Tensor) and a.dim() >= 1 for a in args[1:3])
        return "norm", 0, x.numel() * (2 if affine else 1), ()
    if op in _ADD_OPS:
        both = sum(isinstance(a, torch.Tensor) and a.numel() > 1 for a in args[:2]) == 2
        return ("add" if both else "other"), 0, n_out, ()
    if op in _ACT_OPS:
        return "act", 0, n_out, ()
    if op in _MOVE_OPS:  # one op per element moved, as before they had a kind of their own
        return "move", 0, n_out, ()
    return "other", 0, n_out, ()


def _sdpa_cost(args) -> tuple[str, int, int, tuple]:
    """softmax(Q K^T) V: (B, H, L, E) x (B, H, S, E) -> (B, H, L, S), then x (B, H, S, Ev).
    MACs of both GEMMs; the softmax as ~5 ops per score (max, sub, exp, sum, div)."""
    q, k, v = args[0], args[1], args[2]
    lead = math.prod(q.shape[:-2])
    n_l, e, n_s, ev = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    scores = lead * n_l * n_s
    return "linear", scores * e + scores * ev, 5 * scores, (lead * n_l, n_s, e)
