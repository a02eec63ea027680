"""What a model costs, counted and estimated (issue 5).

Counted, from the PyTorch model:
- `count_layers` / `layer_table`: per layer (conv, depthwise conv, linear/matmul, pool, add,
  other), MACs, other arithmetic, weight bytes and activation bytes in and out at a precision.
  Leaf modules are found with forward hooks; the aten ops inside them, and the functional ops
  between modules (residual `x + out`, `torch.bmm` in attention, `x * s` in squeeze-excite) are
  seen with a TorchDispatchMode, so nothing the model computes is silently left out.

Estimated, for a device profile (targets/devices.yaml):
- `estimate_latency`: per-layer roofline, time = max(MACs / (peak x efficiency[op class]),
  bytes / (DRAM bandwidth x bw efficiency)) + a fixed per-layer overhead, summed. The efficiency
  factors are fitted on this host (benchmarks/estimator.py -> targets/host_calibration.json)
  from ExecuTorch XNNPACK latencies of the zoo models and of random networks
  (benchmarks/synthetic_models.py); the file also carries the estimator's
  leave-one-model-out error on this host, which every estimate is reported with.
- `estimate_energy`: MACs x pJ/MAC + DRAM bytes x pJ/byte from the device's energy model.
- `estimate_for_devices`: both, for a list of devices, as report figures.

Measured / counted from exported files live in pipeline/profile.py (`peak_rss`) and, for
ExecuTorch, in targets/executorch_xnnpack.py (`planned_memory`, `op_breakdown`, reached
through the backend's `profile_extras`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline.report import fig

PRECISION_BYTES = {"fp32": 4, "int8": 1}
# efficiency classes: one fitted factor each (per precision)
EFF_CLASSES = ("conv", "dwconv", "linear", "other", "portable")
# XNNPACK splits these over its threads; "portable" kernels run on one
PARALLEL_CLASSES = ("conv", "dwconv", "linear", "other")
# "linear" is every GEMM: nn.Linear, matmul/bmm, and 1x1 stride-1 convs ("pwconv"), which the
# XNNPACK delegate runs as "Fully Connected" operators (seen in ETDump)
# "portable": a layer norm / group norm, which this XNNPACK partitioner leaves to ExecuTorch's
# portable kernels (ETDump shows `native_call_native_layer_norm.out`), splitting the delegate
KIND_CLASS = {
    "conv": "conv",
    "dwconv": "dwconv",
    "pwconv": "linear",
    "linear": "linear",
    "pool": "other",
    "add": "other",
    "other": "other",
    "portable": "portable",
}
_PORTABLE_NORMS = ("layer_norm", "group_norm")
CALIBRATION_PATH = Path(__file__).resolve().parent.parent / "targets" / "host_calibration.json"

# aten ops that only change a tensor's view or metadata: no arithmetic, no bytes
_VIEW_OPS = {
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
# an eval BatchNorm right after a conv/linear, and a ReLU / ReLU6 / clamp right after a
# conv/linear (or after such a folded BatchNorm), are folded into it by the XNNPACK lowering
# (batch norm into the weights, the activation as the output clamp). A ReLU after a residual
# add is not: ETDump shows "Add (ND)" followed by its own "Clamp (NC)" operator.
_ACT_OPS = {"relu", "relu_", "hardtanh", "hardtanh_", "clamp", "clamp_", "threshold"}
_FUSE_BN_INTO = {"conv", "dwconv", "pwconv", "linear"}
_FUSE_ACT_INTO = {"conv", "dwconv", "pwconv", "linear"}


@dataclass
class Layer:
    """One runtime layer, counted. `kind` is conv | dwconv | pwconv (1x1) | linear | pool | add |
    portable (a layer/group norm, run outside XNNPACK) | other, or
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


def _name(func) -> str:
    return func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _tensors(y)


def _ptr(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except Exception:  # noqa: BLE001  (tensor subclasses without storage)
        return id(t)


def _op_cost(op: str, args, kwargs, out) -> tuple[str, int, int, tuple]:
    """(kind, MACs, other ops, (M, N, K) of the GEMM or ()) of one aten op."""
    outs = list(_tensors(out))
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
    return "other", 0, n_out, ()


class _Counter(TorchDispatchMode):
    def __init__(self, on_op):
        super().__init__()
        self.on_op = on_op

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.on_op(func, args, kwargs, out)
        return out


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
    eb = PRECISION_BYTES[precision]
    params = {}
    for p in model.parameters():
        params[_ptr(p)] = p
    layers: list[Layer] = []
    stack: list[tuple[str, nn.Module, Layer | None]] = []
    names = {m: n or type(model).__name__ for n, m in model.named_modules()}
    counter = {}

    def w_bytes(t: torch.Tensor) -> int:
        return t.numel() * (4 if t.dim() <= 1 else eb)  # biases and norm params at 4 B

    def pre(mod, inputs):
        leaf = not any(True for _ in mod.children())
        layer = None
        if leaf:
            ins = [t for t in _tensors(inputs) if _ptr(t) not in params]
            layer = Layer(
                names.get(mod, type(mod).__name__),
                "",
                type(mod).__name__,
                [],
                0,
                0,
                sum(w_bytes(p) for p in mod.parameters()),
                sum(t.numel() for t in ins) * eb,
                0,
                _in_ptrs=tuple(_ptr(t) for t in ins),
            )
        stack.append((names.get(mod, ""), mod, layer))

    def post(mod, inputs, output):
        _, _, layer = stack.pop()
        if layer is None:
            return
        outs = list(_tensors(output))
        layer.act_out_bytes = sum(t.numel() for t in outs) * eb
        layer._out_ptr = _ptr(outs[0]) if outs else 0
        _finish(layer)

    def _finish(layer: Layer):
        if not layer.ops_seen:  # identity / dropout in eval: nothing runs
            return
        kinds = layer.kind.split("+") if layer.kind else []
        for k in ("conv", "dwconv", "pwconv", "linear", "add", "pool"):
            if k in kinds:
                layer.kind = k
                break
        else:
            if kinds and all(k in ("norm", "act") for k in kinds):
                layer.kind = kinds[0]
            else:
                layer.kind = "other"
        _maybe_fuse(layer)
        layers.append(layer)

    def _maybe_fuse(layer: Layer):
        if layer.kind not in ("norm", "act"):
            return
        prev = layers[-1] if layers else None
        if prev is not None and prev._out_ptr in layer._in_ptrs:
            if layer.kind == "norm":
                bn = any("batch_norm" in o for o in layer.ops_seen)
                if bn and prev.kind in _FUSE_BN_INTO:
                    layer.kind, layer.fused_into = "fused", prev.name
                    return
            else:
                host = prev
                if prev.kind == "fused":  # conv -> BN (folded) -> ReLU: into the same conv
                    host = next((l for l in reversed(layers) if l.name == prev.fused_into), None)
                if host is not None and host.kind in _FUSE_ACT_INTO:
                    layer.kind, layer.fused_into = "fused", host.name
                    return
        portable = layer.kind == "norm" and any(
            n in o for o in layer.ops_seen for n in _PORTABLE_NORMS
        )
        layer.kind = "portable" if portable else "other"

    def on_op(func, args, kwargs, out):
        op = _name(func)
        if op in _VIEW_OPS:
            return
        kind, macs, ops, shape = _op_cost(op, args, kwargs, out)
        cur = stack[-1][2] if stack else None
        if cur is not None:  # inside a leaf module
            cur.ops_seen.append(op)
            cur.kind = f"{cur.kind}+{kind}" if cur.kind else kind
            cur.macs += macs
            cur.ops += ops
            if shape and not cur.gemm_m:
                cur.gemm_m, cur.gemm_n, cur.gemm_k = (int(v) for v in shape)
            return
        parent = stack[-1][0] if stack else type(model).__name__
        key = f"{parent}:{op}"
        counter[key] = counter.get(key, 0) + 1
        tens = list(_tensors(args))
        wts = [t for t in tens if _ptr(t) in params]
        ins = [t for t in tens if _ptr(t) not in params]
        outs = list(_tensors(out))
        layer = Layer(
            f"{key}#{counter[key]}",
            kind,
            "functional",
            [op],
            macs,
            ops,
            sum(w_bytes(t) for t in wts),
            sum(t.numel() for t in ins) * eb,
            sum(t.numel() for t in outs) * eb,
            _out_ptr=_ptr(outs[0]) if outs else 0,
            _in_ptrs=tuple(_ptr(t) for t in ins),
        )
        if shape:
            layer.gemm_m, layer.gemm_n, layer.gemm_k = (int(v) for v in shape)
        _finish(layer)

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _Counter(on_op):
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return layers


def layer_table(model: nn.Module, example: torch.Tensor, precision: str = "fp32") -> dict:
    """Per-layer counts as one table (source "counted", units in the header) plus totals as
    figures. Rows: name, kind, module, macs, ops, weight_bytes, act_in_bytes, act_out_bytes,
    bytes_moved, fused_into, gemm_m/n/k (the GEMM a conv/linear computes)."""
    layers = count_layers(model, example, precision)
    on = f"{type(model).__name__}, input {tuple(example.shape)}, {precision}, per layer"
    cols = [
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
    rows = [[l.row()[c] for c in cols] for l in layers]
    run = [l for l in layers if l.kind != "fused"]
    tot_on = f"{type(model).__name__}, input {tuple(example.shape)}, {precision}, sum over layers"
    totals = {
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
    return {
        "source": "counted",
        "on": on,
        "units": {
            "macs": "MAC",
            "ops": "op",
            "weight_bytes": "B",
            "act_in_bytes": "B",
            "act_out_bytes": "B",
            "bytes_moved": "B",
        },
        "columns": cols,
        "rows": rows,
        "totals": totals,
        "notes": [
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
        ],
    }


# ----------------------------------------------------------------------------------------------
# roofline


@dataclass(frozen=True)
class Calibration:
    """Efficiency factors fitted on this host (benchmarks/estimator.py), per precision `p`.

    eff[p][class]: the fraction of the per-core peak MAC rate a large layer of the class
        reaches (class: conv, dwconv, linear, other; "other" counts an elementwise op as a MAC);
    shape_m0 / shape_n0 / shape_k0[p]: a conv/linear layer's efficiency is
        eff[class] x M/(M + m0) x N/(N + n0) x K/(K + k0), M, N, K its GEMM dimensions
        (output pixels or tokens, output channels, MACs per output): small GEMMs use the
        kernels' register tiles poorly;
    bw_eff[p]: fraction of the DRAM bandwidth the memory term assumes (<= 1);
    overhead_ms[p]: fixed time per layer that runs, at the host's clock;
    sync_ms[p]: extra time per layer when more than one thread runs (threadpool dispatch);
    portable_ms[p]: extra time per `portable` layer (the delegate is split around it);
    call_overhead_ms[p]: fixed time per inference (runtime entry, layout/convert ops at the
        delegate boundary, the Python runner), at the host's clock;
    parallel_eff[p]: each core beyond the first adds this fraction of a core to the layers
        XNNPACK runs (PARALLEL_CLASSES: it splits their work over its threads);
    parallel_eff_portable[p]: the same for `portable` layers (ExecuTorch's portable kernels,
        outside the delegate); a calibration without it uses parallel_eff.
    """

    eff: dict
    bw_eff: dict
    overhead_ms: dict
    call_overhead_ms: dict
    parallel_eff: dict
    host_clock_ghz: float
    shape_m0: dict = field(default_factory=lambda: {"fp32": 0.0, "int8": 0.0})
    shape_n0: dict = field(default_factory=lambda: {"fp32": 0.0, "int8": 0.0})
    shape_k0: dict = field(default_factory=lambda: {"fp32": 0.0, "int8": 0.0})
    sync_ms: dict = field(default_factory=lambda: {"fp32": 0.0, "int8": 0.0})
    portable_ms: dict = field(default_factory=lambda: {"fp32": 0.0, "int8": 0.0})
    parallel_eff_portable: dict | None = None
    meta: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)

    _FIELDS = (
        "eff",
        "bw_eff",
        "overhead_ms",
        "call_overhead_ms",
        "parallel_eff",
        "shape_m0",
        "shape_n0",
        "shape_k0",
        "sync_ms",
        "portable_ms",
        "parallel_eff_portable",
    )

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        kw = {k: d[k] for k in cls._FIELDS if k in d}
        return cls(
            host_clock_ghz=float(d["host_clock_ghz"]),
            meta=d.get("meta", {}),
            validation=d.get("validation", {}),
            **kw,
        )

    def to_dict(self) -> dict:
        return {
            **{k: getattr(self, k) for k in self._FIELDS},
            "host_clock_ghz": self.host_clock_ghz,
            "meta": self.meta,
            "validation": self.validation,
        }


class CalibrationMissing(RuntimeError):
    pass


@cache
def load_calibration(path: str | Path | None = None) -> Calibration:
    """The fitted calibration (targets/host_calibration.json, written by benchmarks/estimator.py)."""
    p = Path(path) if path is not None else CALIBRATION_PATH
    if not p.exists():
        raise CalibrationMissing(
            f"{p} is missing: run `python benchmarks/estimator.py` to fit the estimator on this host"
        )
    return Calibration.from_dict(json.loads(p.read_text()))


@dataclass(frozen=True)
class Machine:
    """The figures the roofline needs. From a DeviceProfile via `Machine.of`, or built by hand
    (the host, tests). bw_gb_s None = no public DRAM bandwidth: the memory term is missing.
    cache_bytes: the cache a layer's activations must fit in to stay on chip (the L2 of the
    profile); None = not public, and then activations are counted as DRAM traffic.
    llc_bytes: the last-level cache that keeps a model's weights between inferences when all of
    them fit (the host's L3, read from sysfs); None = not known (the device profiles), and then
    the weights are read from DRAM at every inference."""

    name: str
    clock_ghz: float
    cores: int
    peak_gmac_s: dict  # precision -> per-core peak GMAC/s
    bw_gb_s: float | None
    bw_missing_reason: str = ""
    cache_bytes: int | None = None
    llc_bytes: int | None = None

    @classmethod
    def of(cls, device) -> Machine:
        bw, l2 = device.dram_bandwidth_gb_s, device.l2_kib
        return cls(
            device.key,
            device.clock_ghz.value,
            int(device.cores.value),
            {"fp32": device.peak_fp32_gmac_s.value, "int8": device.peak_int8_gmac_s.value},
            bw.value,
            ""
            if bw.known
            else f"dram_bandwidth_gb_s is null ({bw.basis}): {bw.source.rstrip('.')}",
            int(l2.value * 1024) if l2.known else None,
        )


def weights_resident(layers: list[Layer], machine: Machine) -> bool:
    """True when all of the model's weights fit in the machine's last-level cache, so that
    back-to-back inferences read them from there rather than from DRAM."""
    return (
        machine.llc_bytes is not None
        and sum(l.weight_bytes for l in layers if l.kind != "fused") <= machine.llc_bytes
    )


def dram_bytes(layer: Layer, machine: Machine, weights_cached: bool = False) -> int:
    """Bytes a layer moves to or from DRAM: its weights (read once per inference, unless
    `weights_cached`: see weights_resident), plus its input and output activations when
    together they exceed the machine's cache (or when the cache size is not known)."""
    if layer.kind == "fused":
        return 0
    acts = layer.act_in_bytes + layer.act_out_bytes
    spill = machine.cache_bytes is None or acts > machine.cache_bytes
    return (0 if weights_cached else layer.weight_bytes) + (acts if spill else 0)


def effective_cores(machine: Machine, threads: int, parallel_eff: float) -> float:
    """1 + (min(threads, cores) - 1) x parallel efficiency."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return 1.0 + (min(threads, machine.cores) - 1) * parallel_eff


def shape_factor(layer: Layer, precision: str, cal: Calibration) -> float:
    """M/(M + m0) x N/(N + n0) x K/(K + k0) for conv/linear layers, 1 for the others."""
    if not layer.gemm_m:
        return 1.0
    f = 1.0
    for v, c in (
        (layer.gemm_m, cal.shape_m0),
        (layer.gemm_n, cal.shape_n0),
        (layer.gemm_k, cal.shape_k0),
    ):
        x0 = c.get(precision, 0.0)
        f *= v / (v + x0)
    return f


def layer_times(
    layers: list[Layer], machine: Machine, precision: str, threads: int, cal: Calibration
) -> list[dict]:
    """Per-layer roofline: compute and memory time (ms), the larger, and the overhead.

    compute = (MACs + ops) / (peak_per_core x effective cores x eff[class] x shape factor),
              effective cores from parallel_eff (PARALLEL_CLASSES) or parallel_eff_portable;
    memory  = dram_bytes / (bandwidth x bw_eff)  (None when the machine has no bandwidth;
              no weight bytes when all weights fit the machine's last-level cache);
    overhead = (overhead_ms [+ sync_ms if threads > 1] [+ portable_ms for a portable layer])
               x host clock / machine clock.
    """
    cores = effective_cores(machine, threads, cal.parallel_eff[precision])
    portable_cores = effective_cores(
        machine, threads, (cal.parallel_eff_portable or cal.parallel_eff)[precision]
    )
    peak = machine.peak_gmac_s[precision] * 1e9
    per = cal.overhead_ms[precision] + (
        cal.sync_ms[precision] if min(threads, machine.cores) > 1 else 0.0
    )
    over = per * cal.host_clock_ghz / machine.clock_ghz
    cached = weights_resident(layers, machine)
    out = []
    for l in layers:
        if l.kind == "fused":
            continue
        cls = KIND_CLASS[l.kind]
        effs = cal.eff[precision]
        # a calibration from before the portable class charges those layers as `other`
        eff = effs.get(cls, effs["other"]) * shape_factor(l, precision, cal)
        extra = (
            cal.portable_ms[precision] * cal.host_clock_ghz / machine.clock_ghz
            if cls == "portable"
            else 0.0
        )
        n = cores if cls in PARALLEL_CLASSES else portable_cores
        compute = (l.macs + l.ops) / (peak * n * eff) * 1e3
        memory = (
            None
            if machine.bw_gb_s is None
            else dram_bytes(l, machine, cached)
            / (machine.bw_gb_s * 1e9 * cal.bw_eff[precision])
            * 1e3
        )
        t = compute if memory is None else max(compute, memory)
        out.append(
            {
                "name": l.name,
                "kind": l.kind,
                "class": cls,
                "compute_ms": compute,
                "memory_ms": memory,
                "overhead_ms": over + extra,
                "ms": t + over + extra,
                "bound": "compute" if memory is None or compute >= memory else "memory",
            }
        )
    return out


def call_overhead_ms(machine: Machine, precision: str, cal: Calibration) -> float:
    return cal.call_overhead_ms[precision] * cal.host_clock_ghz / machine.clock_ghz


def roofline_ms(
    layers: list[Layer], machine: Machine, precision: str, threads: int, cal: Calibration
) -> float:
    """Estimated latency (ms): the per-layer roofline summed, plus the per-inference overhead."""
    rows = layer_times(layers, machine, precision, threads, cal)
    return sum(r["ms"] for r in rows) + call_overhead_ms(machine, precision, cal)


def estimate_latency(
    layers: list[Layer],
    machine: Machine,
    precision: str,
    threads: int,
    cal: Calibration | None = None,
) -> dict:
    """Estimated latency (ms) as a figure, with the split into compute- and memory-bound time."""
    cal = cal or load_calibration()
    rows = layer_times(layers, machine, precision, threads, cal)
    call = call_overhead_ms(machine, precision, cal)
    total = sum(r["ms"] for r in rows) + call
    used = min(threads, machine.cores)
    on = (
        f"{machine.name}, {precision}, {threads} thread(s) -> {used} core(s), per-layer "
        f"roofline with efficiencies fitted on {cal.meta.get('host_cpu', 'this host')}"
    )
    out = {
        "latency": fig(total, "ms", "estimated", on),
        "compute_bound_layers": sum(r["bound"] == "compute" for r in rows),
        "memory_bound_layers": sum(r["bound"] == "memory" for r in rows),
        "compute_bound_ms": fig(
            sum(r["ms"] - r["overhead_ms"] for r in rows if r["bound"] == "compute"),
            "ms",
            "estimated",
            on,
        ),
        "memory_bound_ms": fig(
            sum(r["ms"] - r["overhead_ms"] for r in rows if r["bound"] == "memory"),
            "ms",
            "estimated",
            on,
        ),
        "overhead": fig(
            sum(r["overhead_ms"] for r in rows) + call,
            "ms",
            "estimated",
            on + ": fixed per-layer and per-inference costs, scaled by clock",
        ),
        "memory_term": "included",
    }
    if machine.bw_gb_s is None:
        out["memory_term"] = "missing"
        out["memory_term_missing"] = (
            f"no DRAM bandwidth for {machine.name}: {machine.bw_missing_reason}. The estimate "
            "has the compute term and overhead only, so it is a lower bound for memory-bound "
            "layers"
        )
        out["latency"]["on"] += "; memory term missing (no public DRAM bandwidth)"
    elif machine.cache_bytes is None:
        out["cache_note"] = (
            f"no public L2 size for {machine.name}: every layer's activations "
            "are counted as DRAM traffic (pessimistic for small models)"
        )
    return out


def estimate_energy(layers: list[Layer], device, precision: str) -> dict:
    """Energy proxy per inference from the device's energy model (a 45 nm proxy):
    MACs x pJ/MAC(precision) + DRAM bytes x pJ/byte + on-chip activation bytes x pJ/byte (SRAM).

    DRAM bytes as in the roofline (`dram_bytes`): weights, plus activations that do not fit the
    device's L2 (all activations where its L2 size is not public). Activations that fit stay
    on chip and are charged at the SRAM figure, an L1-sized best case. Non-MAC arithmetic (bias,
    pooling, elementwise) is not charged.
    """
    em = device.energy_model
    m = Machine.of(device)
    pj_mac = {"fp32": em.pj_per_fp32_mac.value, "int8": em.pj_per_int8_mac.value}[precision]
    run = [l for l in layers if l.kind != "fused"]
    macs = sum(l.macs for l in layers)
    cached = weights_resident(run, m)
    dram = sum(dram_bytes(l, m, cached) for l in run)
    sram = sum(l.bytes_moved for l in run) - dram
    e_mac = macs * pj_mac * 1e-9  # pJ -> mJ
    e_dram = dram * em.pj_per_dram_byte.value * 1e-9
    e_sram = sram * em.pj_per_sram_byte.value * 1e-9
    cache = (
        f"L2 {device.l2_kib.value:g} KiB"
        if m.cache_bytes is not None
        else "no public L2 size: all activations from DRAM"
    )
    on = (
        f"{device.key}, {precision}, energy model {em.key}: {macs:,} MAC x {pj_mac} pJ + "
        f"{dram:,} B DRAM x {em.pj_per_dram_byte.value} pJ/B + {sram:,} B on chip x "
        f"{em.pj_per_sram_byte.value} pJ/B ({cache}); 45 nm proxy, relative use only"
    )
    return {
        "energy": fig(e_mac + e_dram + e_sram, "mJ", "estimated", on),
        "compute_energy": fig(e_mac, "mJ", "estimated", on),
        "dram_energy": fig(e_dram, "mJ", "estimated", on),
        "sram_energy": fig(e_sram, "mJ", "estimated", on),
        "energy_model": em.key,
    }


def estimator_error(cal: Calibration | None = None, precision: str | None = None) -> dict | None:
    """The estimator's measured leave-one-model-out error on this host, as figures."""
    cal = cal or load_calibration()
    v = cal.validation
    if not v:
        return None
    s = v.get("by_precision", {}).get(precision) if precision else None
    s = s or v["all"]
    on = f"{v['on']}; {s['cases']} held-out (model, precision, threads) cases" + (
        f", {precision} only" if precision and v.get("by_precision", {}).get(precision) else ""
    )
    return {
        "median_abs_error": fig(s["median_abs_error"], "fraction", "measured", on),
        "p90_abs_error": fig(s["p90_abs_error"], "fraction", "measured", on),
        "within_15pct": fig(s["within_15pct"], "fraction", "measured", on),
    }


@cache
def this_cpu() -> str:
    """This machine's CPU model name (/proc/cpuinfo on Linux, else platform.processor())."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fitted_elsewhere(cal: Calibration) -> str | None:
    """The CPU the calibration was fitted on, where it is not this machine's; else None."""
    fitted = cal.meta.get("host_cpu")
    return fitted if fitted and fitted != this_cpu() else None


def estimate_for_devices(
    model: nn.Module,
    example: torch.Tensor,
    precision: str,
    devices: list[str],
    threads: int | list[int] = 1,
    cal: Calibration | None = None,
) -> dict:
    """{device: {"threads": {T: latency block}, "energy": ..., "estimator_error": ...}}.

    Every number is a figure; latency is `estimated`, the error beside it `measured` (on this
    host, held-out zoo models). A device without a public DRAM bandwidth gets
    memory_term: "missing" and the reason.
    """
    from targets.devices import get_device

    cal = cal or load_calibration()
    layers = count_layers(model, example, precision)
    err = estimator_error(cal, precision)
    elsewhere = fitted_elsewhere(cal)
    caveat = (
        "efficiency factors were fitted for XNNPACK on this host's x86 cores and applied "
        "to the device's Arm peak figures; the error beside the estimate is this host's, "
        "not the device's"
    )
    if elsewhere:
        caveat = (
            f"efficiency factors were fitted for XNNPACK on another machine ({elsewhere}), "
            f"not this one ({this_cpu()}), and applied to the device's Arm peak figures; "
            "the error beside the estimate is that machine's, not the device's "
            "(`python benchmarks/estimator.py` refits on this machine)"
        )
    out = {}
    for key in devices:
        dev = get_device(key)
        m = Machine.of(dev)
        per_t = {}
        for t in [threads] if isinstance(threads, int) else threads:
            per_t[str(t)] = estimate_latency(layers, m, precision, t, cal)
        out[key] = {
            "name": dev.name,
            "core": dev.core,
            "precision": precision,
            "latency": per_t,
            **estimate_energy(layers, dev, precision),
            "estimator_error": err,
            "caveat": caveat,
        }
    return out
