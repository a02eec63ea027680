"""Counting a model's layers: MACs, other arithmetic, weight and activation bytes per layer.

Leaf modules are found with forward hooks; the aten ops inside them, and the functional ops
between modules (residual `x + out`, `torch.bmm` in attention, `x * s` in squeeze-excite) are
seen with a TorchDispatchMode, so nothing the model computes is silently left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline.estimate.ops import VIEW_OPS, op_cost, op_name, tensors

PRECISION_BYTES = {"fp32": 4, "int8": 1}
# norms that XNNPACK leaves to ExecuTorch's portable kernels: kind "portable" (roofline.KIND_CLASS)
_PORTABLE_NORMS = ("layer_norm", "group_norm")
# an eval BatchNorm right after a conv/linear, and a ReLU / ReLU6 / clamp right after a
# conv/linear (or after such a folded BatchNorm), are folded into it by the XNNPACK lowering
# (batch norm into the weights, the activation as the output clamp). A ReLU after a residual
# add is not: ETDump shows "Add (ND)" followed by its own "Clamp (NC)" operator.
_FUSE_BN_INTO = {"conv", "dwconv", "pwconv", "linear"}
_FUSE_ACT_INTO = {"conv", "dwconv", "pwconv", "linear"}
# the kinds a layer's ops resolve to, first match wins
_MAIN_KINDS = ("conv", "dwconv", "pwconv", "linear", "add", "pool", "move")


@dataclass
class Layer:
    """One runtime layer, counted. `kind` is conv | dwconv | pwconv (1x1) | linear | pool | add |
    move (concatenate, copy, pad: data movement only) | portable (a layer/group norm, run
    outside XNNPACK) | other, or
    `fused` for a batch norm / ReLU-like op that XNNPACK folds into the layer before it."""

    name: str
    kind: str
    module: str  # module class, or "functional" for an op outside any leaf module
    ops_seen: list[str]
    macs: int  # multiply-accumulates (conv, linear, matmul)
    ops: int  # other arithmetic: bias adds, norms, activations, pooling, elementwise
    weight_bytes: int
    act_in_bytes: int
    act_out_bytes: int
    fused_into: str | None = None
    # the GEMM the layer's kernel computes (conv/linear/matmul): M output rows (pixels or
    # tokens), N output channels, K MACs per output; for a depthwise conv N = channels,
    # K = kernel taps. 0 for other layers.
    gemm_m: int = 0
    gemm_n: int = 0
    gemm_k: int = 0
    _out_ptr: int = field(default=0, repr=False)
    _in_ptrs: tuple = field(default=(), repr=False)

    @property
    def bytes_moved(self) -> int:
        """Bytes the layer reads and writes at run time (0 when it is folded away)."""
        return (
            0
            if self.kind == "fused"
            else self.weight_bytes + self.act_in_bytes + self.act_out_bytes
        )

    def row(self) -> dict:
        d = asdict(self)
        for k in ("_out_ptr", "_in_ptrs"):
            d.pop(k)
        d["bytes_moved"] = self.bytes_moved
        return d


def _ptr(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except Exception:  # noqa: BLE001  (tensor subclasses without storage)
        return id(t)


def _resolved_kind(kinds: list[str]) -> str:
    """The kind of a layer whose ops had `kinds`: its main op's, else norm/act, else other."""
    for k in _MAIN_KINDS:
        if k in kinds:
            return k
    if kinds and all(k in ("norm", "act") for k in kinds):
        return kinds[0]
    return "other"


class _Counter(TorchDispatchMode):
    def __init__(self, on_op):
        super().__init__()
        self.on_op = on_op

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.on_op(func, args, kwargs, out)
        return out


class _Tally:
    """The layers of one `count_layers` run. Module hooks (`pre`, `post`) keep the stack of
    modules being called and open a Layer for each leaf; `on_op` adds every aten op to the open
    leaf, or makes it a functional layer of its own."""

    def __init__(self, model: nn.Module, elem_bytes: int):
        self.root = type(model).__name__
        self.eb = elem_bytes
        self.params = {_ptr(p): p for p in model.parameters()}
        self.names = {m: n or self.root for n, m in model.named_modules()}
        self.layers: list[Layer] = []
        self.stack: list[tuple[str, nn.Module, Layer | None]] = []
        self.calls: dict[str, int] = {}  # "parent:op" -> functional calls so far

    def w_bytes(self, t: torch.Tensor) -> int:
        return t.numel() * (4 if t.dim() <= 1 else self.eb)  # biases and norm params at 4 B

    def act_bytes(self, ts: list[torch.Tensor]) -> int:
        return sum(t.numel() for t in ts) * self.eb

    def pre(self, mod, inputs):
        leaf = not any(True for _ in mod.children())
        layer = None
        if leaf:
            ins = [t for t in tensors(inputs) if _ptr(t) not in self.params]
            layer = Layer(
                self.names.get(mod, type(mod).__name__),
                "",
                type(mod).__name__,
                [],
                0,
                0,
                sum(self.w_bytes(p) for p in mod.parameters()),
                self.act_bytes(ins),
                0,
                _in_ptrs=tuple(_ptr(t) for t in ins),
            )
        self.stack.append((self.names.get(mod, ""), mod, layer))

    def post(self, mod, inputs, output):
        _, _, layer = self.stack.pop()
        if layer is None:
            return
        outs = list(tensors(output))
        layer.act_out_bytes = self.act_bytes(outs)
        layer._out_ptr = _ptr(outs[0]) if outs else 0
        self.finish(layer)

    def on_op(self, func, args, kwargs, out):
        op = op_name(func)
        if op in VIEW_OPS:
            return
        kind, macs, ops, shape = op_cost(op, args, kwargs, out)
        cur = self.stack[-1][2] if self.stack else None
        if cur is not None:  # inside a leaf module
            cur.ops_seen.append(op)
            cur.kind = f"{cur.kind}+{kind}" if cur.kind else kind
            cur.macs += macs
            cur.ops += ops
            if shape and not cur.gemm_m:
                cur.gemm_m, cur.gemm_n, cur.gemm_k = (int(v) for v in shape)
            return
        layer = self.functional_layer(op, kind, macs, ops, args, out)
        if shape:
            layer.gemm_m, layer.gemm_n, layer.gemm_k = (int(v) for v in shape)
        self.finish(layer)

    def functional_layer(self, op: str, kind: str, macs: int, ops: int, args, out) -> Layer:
        """A layer for an op that runs in a container's own forward, named parent:op#n."""
        parent = self.stack[-1][0] if self.stack else self.root
        key = f"{parent}:{op}"
        self.calls[key] = self.calls.get(key, 0) + 1
        tens = list(tensors(args))
        wts = [t for t in tens if _ptr(t) in self.params]
        ins = [t for t in tens if _ptr(t) not in self.params]
        outs = list(tensors(out))
        return Layer(
            f"{key}#{self.calls[key]}",
            kind,
            "functional",
            [op],
            macs,
            ops,
            sum(self.w_bytes(t) for t in wts),
            self.act_bytes(ins),
            self.act_bytes(outs),
            _out_ptr=_ptr(outs[0]) if outs else 0,
            _in_ptrs=tuple(_ptr(t) for t in ins),
        )

    def finish(self, layer: Layer):
        if not layer.ops_seen:  # identity / dropout in eval: nothing runs
            return
        layer.kind = _resolved_kind(layer.kind.split("+") if layer.kind else [])
        if layer.kind in ("norm", "act"):
            self.fuse(layer)
        self.layers.append(layer)

    def fuse(self, layer: Layer):
        """A norm or activation becomes `fused` into the layer XNNPACK folds it into, else
        `portable` (a layer/group norm) or `other`."""
        host = self.fusion_host(layer)
        if host is not None:
            layer.kind, layer.fused_into = "fused", host
            return
        portable = layer.kind == "norm" and any(
            n in o for o in layer.ops_seen for n in _PORTABLE_NORMS
        )
        layer.kind = "portable" if portable else "other"

    def fusion_host(self, layer: Layer) -> str | None:
        """The name of the layer that `layer` (a norm or activation reading its output) folds
        into, or None."""
        prev = self.layers[-1] if self.layers else None
        if prev is None or prev._out_ptr not in layer._in_ptrs:
            return None
        if layer.kind == "norm":
            bn = any("batch_norm" in o for o in layer.ops_seen)
            return prev.name if bn and prev.kind in _FUSE_BN_INTO else None
        host = prev
        if prev.kind == "fused":  # conv -> BN (folded) -> ReLU: into the same conv
            host = next((l for l in reversed(self.layers) if l.name == prev.fused_into), None)
        return host.name if host is not None and host.kind in _FUSE_ACT_INTO else None


def count_layers(model: nn.Module, example: torch.Tensor, precision: str = "fp32") -> list[Layer]:
    """Run `model(example)` once, in eval mode and without gradients, and count every layer.

    A layer is a call of a leaf module (one with no children), or an op that runs in a
    container's own forward (functional adds, matmuls, multiplies). View ops (reshape,
    transpose, flatten) cost nothing and are dropped. A BatchNorm directly after a conv/linear,
    and a ReLU/ReLU6/clamp directly after one (or after its folded BatchNorm), become kind
    `fused`, as the XNNPACK lowering folds them; a ReLU after a residual add stays a layer.

    Bytes at `precision` (fp32: 4 B per element, int8: 1 B per weight and activation; biases
    counted at 4 B, as int8 kernels keep them in int32).
    """
    if precision not in PRECISION_BYTES:
        raise ValueError(f"precision {precision!r} not in {sorted(PRECISION_BYTES)}")
    tally = _Tally(model, PRECISION_BYTES[precision])
    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(tally.pre))
        handles.append(m.register_forward_hook(tally.post))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _Counter(tally.on_op):
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return tally.layers
