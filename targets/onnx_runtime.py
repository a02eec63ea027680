"""ONNX Runtime (CPU execution provider): .onnx files, fp32 or int8 (static QDQ).

fp32: the dynamo exporter (`torch.onnx.export(..., dynamo=True)`, opset 18), one self-contained
file (`external_data=False`; the exporter's default splits weights into a `.onnx.data` file).
Batch norm is folded into the convolutions by the exporter's optimizer.

int8: onnxruntime's own post-training quantizer, static QDQ format: `quant_pre_process`, then
`quantize_static` with per-channel symmetric int8 weights, asymmetric int8 activations and
MinMax calibration over the calibration images. ORT fuses the DequantizeLinear -> op ->
QuantizeLinear patterns into integer kernels (QLinearConv, ...) when it loads the file.

What the int8 file is compared with. ORT's quantizer works on the ONNX graph, so there is no
PyTorch fake-quant model it produced (as PT2E gives for ExecuTorch). Comparing with the fp32
PyTorch model would mix two things, quantization error and kernel error, and fails on inputs
outside the calibration range, where the int8 file saturates by design (on a digits CNN: 40 dB
on the test split, 5 dB on N(0, 1) inputs). So the reference is the QDQ graph itself evaluated
in PyTorch float arithmetic (`QdqTorchReference`): every QuantizeLinear / DequantizeLinear of the
file becomes round/clamp/scale in torch, every other node its torch function, with the scales
and zero points the quantizer wrote. This is the same kind of reference as a PT2E converted
model: fake-quant ops in torch, with the file's quantization parameters. The file (ORT's fused
integer kernels) is held to it by SQNR and top-1 agreement. How far the quantized graph is from
the fp32 model (the quantization error proper) is measured at export on the calibration images
and written to `notes` and `preflight["quantization_error"]`.

If the quantized graph holds an op the torch evaluator does not know, the reference falls back
to the fp32 PyTorch model with a looser tolerance (agreement only on the test split; no SQNR
bound, since saturation on random inputs is expected), and a note says so.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from targets import _snippets
from targets._base import (
    BackendDefaults,
    Exported,
    ExportRequest,
    Runner,
    Tolerance,
    compare,
)
from targets._registry import register_backend

OPSET = 18
INPUT, OUTPUT = "x", "logits"
FP32_TOL = Tolerance(max_abs_rel=1e-4)
# ORT's integer kernels vs the QDQ graph in torch float math: requantization rounds differently
# now and then, one step here and there, and that propagates through layers
INT8_TOL = Tolerance(min_sqnr_db=25.0, min_agreement=0.98)
# fallback only (no torch twin): int8 file vs the fp32 model; SQNR is not bounded because
# random inputs saturate the calibrated activation ranges
INT8_VS_FP32_TOL = Tolerance(min_agreement=0.97)


@register_backend
class OnnxRuntime(BackendDefaults):
    name = "onnx"
    title = "ONNX Runtime"  # for people: messages and the bundle README
    libraries = ("onnx", "onnxruntime")  # distributions whose versions go into every stage key
    filename = "model.onnx"
    precisions = ("fp32", "int8")
    runtime = "onnxruntime"

    def can_run(self) -> tuple[bool, str]:
        return True, "onnxruntime's CPU execution provider runs .onnx files on this host"

    def export(self, req: ExportRequest) -> Exported:
        import onnx

        if req.precision not in self.precisions:
            raise ValueError(f"{self.name}: precision {req.precision!r} not in {self.precisions}")
        if req.precision == "int8" and (req.calibration is None or len(req.calibration) == 0):
            raise ValueError(f"{self.name}: int8 quantization needs calibration images")
        model, args = req.model.eval(), (req.example,)
        timings, notes = {}, []
        with tempfile.TemporaryDirectory(prefix="slimship-onnx-") as tmp:
            tmp = Path(tmp)
            fp32_path = tmp / "fp32.onnx"
            start = time.perf_counter()
            _export_fp32(model, args, fp32_path)
            timings["torch_onnx_export_s"] = round(time.perf_counter() - start, 2)
            final = fp32_path
            reference, tol = model, FP32_TOL
            if req.precision == "int8":
                start = time.perf_counter()
                final = tmp / "int8.onnx"
                _quantize_qdq(fp32_path, final, tmp, req.calibration)
                timings["quantize_static_s"] = round(time.perf_counter() - start, 2)
            proto = onnx.load(str(final))
            onnx.checker.check_model(proto, full_check=True)
            if req.precision == "int8":
                start = time.perf_counter()
                reference, tol, quant_err, note = _int8_reference(proto, model, req.calibration)
                timings["torch_reference_s"] = round(time.perf_counter() - start, 2)
                notes.append(note)
            path = req.out_dir / self.filename
            _atomic_copy(final, path)
        preflight = {
            "file_ops": _op_counts(proto),
            "opset": _opset(proto),
            "ir_version": proto.ir_version,
            "timings": timings,
        }
        if req.precision == "int8":
            preflight["quantization_error"] = quant_err
            preflight["quantized_initializers"] = _quantized_initializers(proto)
        io = {
            "inputs": [_value_io(v) for v in proto.graph.input],
            "outputs": [_value_io(v) for v in proto.graph.output],
        }
        return Exported(path, req.precision, reference, io, tol, notes=notes, preflight=preflight)

    def load(self, path: Path, threads: int | None = None) -> Runner:
        from targets._standalone import load_onnx

        return load_onnx(path, threads)

    def describe(self, path: Path) -> dict:
        """Counted from the file: op types, opset, IR version, I/O, quantized initializers, size."""
        import onnx

        proto = onnx.load(str(path))
        return {
            "file_ops": _op_counts(proto),
            "opset": _opset(proto),
            "ir_version": proto.ir_version,
            "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
            "inputs": [_value_io(v) for v in proto.graph.input],
            "outputs": [_value_io(v) for v in proto.graph.output],
            "quantized_initializers": _quantized_initializers(proto),
            "external_data": any(
                t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer
            ),
            "bytes": Path(path).stat().st_size,
        }

    def app_snippet(self, entry: dict, shape: list[int]) -> list[str]:
        return _snippets.onnx(entry, shape)

    def arm64_delegate_check(self, path: Path, res: dict, host: dict) -> tuple[dict, list[str]]:
        """No delegate: the file must have run on the CPU provider alone."""
        ev = res["evidence"]
        ok = ev.get("providers") == ["CPUExecutionProvider"]
        return (
            {
                **ev,
                "note": "ONNX Runtime's CPU provider (its aarch64 MLAS kernels); there is "
                "no delegate to check",
            },
            [] if ok else [f"execution providers {ev.get('providers')}, not the CPU provider"],
        )


# ----------------------------------------------------------------------------------------------
# export helpers


def _export_fp32(model, args, path: Path) -> None:
    import contextlib
    import io

    # the dynamo exporter prints its progress ("[torch.onnx] ...") to stdout; keep the log clean
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
    if not path.is_file() or any(p != path for p in path.parent.glob(path.name + "*")):
        raise RuntimeError(f"torch.onnx.export did not write one self-contained file at {path}")


def _quantize_qdq(src: Path, dst: Path, tmp: Path, calibration) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    calibration = np.ascontiguousarray(calibration, dtype=np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(calibration):
                return None
            self.i += 1
            return {INPUT: calibration[self.i - 1 : self.i]}

        def rewind(self):
            self.i = 0

    pre = tmp / "preprocessed.onnx"
    quant_pre_process(str(src), str(pre))
    quantize_static(
        str(pre),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )


def _int8_reference(proto, model, calibration):
    """(reference, tolerance, quantization_error, note) for an int8 QDQ file."""
    try:
        ref = QdqTorchReference(proto)
    except NotImplementedError as e:
        note = (
            f"reference: the fp32 PyTorch model, not a quantized twin ({e}); the int8 file "
            f"is held to top-1 agreement on the test split only"
        )
        return model, INT8_VS_FP32_TOL, None, note
    x = torch.from_numpy(np.ascontiguousarray(calibration[:256], dtype=np.float32))
    with torch.no_grad():
        fig = compare(model(x).numpy(), ref(x).numpy())
    err = {
        "vs": "fp32 PyTorch model",
        "inputs": f"{fig['inputs']} calibration images",
        "sqnr_db": round(float(fig["sqnr_db"]), 2),
        "top1_agreement": round(fig["top1_agreement"], 4),
    }
    note = (
        "reference: the QDQ graph evaluated in PyTorch float math with the file's scales and "
        "zero points (ORT's quantizer has no torch twin); quantization error of that graph "
        f"vs the fp32 model on {fig['inputs']} calibration images: {err['sqnr_db']} dB SQNR, "
        f"top-1 agreement {err['top1_agreement']:.3f}"
    )
    return ref, INT8_TOL, err, note


def _atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(f".{dst.name}.partial")
    shutil.copyfile(src, part)
    os.replace(part, dst)


def _op_counts(proto) -> dict:
    return dict(
        sorted(
            Counter(
                n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                for n in proto.graph.node
            ).items()
        )
    )


def _opset(proto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _quantized_initializers(proto) -> dict:
    import onnx

    names = {
        onnx.TensorProto.INT8: "int8",
        onnx.TensorProto.UINT8: "uint8",
        onnx.TensorProto.INT32: "int32",
    }
    c = Counter(names[t.data_type] for t in proto.graph.initializer if t.data_type in names)
    return dict(sorted(c.items()))


def _value_io(v) -> dict:
    import onnx

    tt = v.type.tensor_type
    shape = [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
    ]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
    return {"name": v.name, "shape": shape, "dtype": dtype}


# ----------------------------------------------------------------------------------------------
# the QDQ graph, evaluated in PyTorch


class QdqTorchReference:
    """Callable torch (N, C, H, W) -> (N, K): the ONNX graph run node by node with torch ops.

    QuantizeLinear is `clamp(round_half_even(x / scale) + zero_point, qmin, qmax)` and
    DequantizeLinear `(q - zero_point) * scale`, per tensor or per axis, as the ONNX spec says;
    the values stay float32 (integers are exact there for 8-bit data). The file has a fixed batch
    of 1 (reshapes carry it), so rows are evaluated one at a time. Raises NotImplementedError at
    construction for an op it does not know.
    """

    def __init__(self, proto):
        from onnx import helper, numpy_helper

        self.nodes = []
        for n in proto.graph.node:
            if n.domain not in ("", "ai.onnx") or n.op_type not in _OPS:
                raise NotImplementedError(f"no torch evaluator for op {n.domain}::{n.op_type}")
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if n.op_type == "Constant":
                attrs = {"value": _constant_value(attrs)}
            self.nodes.append((n.op_type, list(n.input), list(n.output), attrs))
        self.consts = {
            t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
            for t in proto.graph.initializer
        }
        self.consts[""] = None
        # fold nodes fed by constants only (weight DequantizeLinear, Constant, shape arithmetic)
        # once here instead of on every row
        rest = []
        for node in self.nodes:
            if all(i in self.consts for i in node[1]):
                self._eval(node, self.consts)
            else:
                rest.append(node)
        self.nodes = rest
        self.input = proto.graph.input[0].name
        self.output = proto.graph.output[0].name

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # one thread: the per-row ops are tiny, and on a busy host torch's thread pool makes
        # them 20-50x slower (seen: 0.9 s vs 19-50 s for 360 digits rows)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return torch.cat([self._run(x[i : i + 1].float()) for i in range(len(x))])
        finally:
            torch.set_num_threads(threads)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        env = dict(self.consts)
        env[self.input] = x
        for node in self.nodes:
            self._eval(node, env)
        return env[self.output].float()

    @staticmethod
    def _eval(node, env: dict) -> None:
        op, ins, outs, attrs = node
        res = _OPS[op]([env[i] for i in ins], attrs)
        if not isinstance(res, tuple):
            res = (res,)
        for name, val in zip(outs, res):
            if name:
                env[name] = val


def _constant_value(attrs):
    from onnx import numpy_helper

    if "value" in attrs:
        return torch.from_numpy(numpy_helper.to_array(attrs["value"]).copy())
    for k, dt in (
        ("value_float", torch.float32),
        ("value_floats", torch.float32),
        ("value_int", torch.int64),
        ("value_ints", torch.int64),
    ):
        if k in attrs:
            return torch.tensor(attrs[k], dtype=dt)
    raise NotImplementedError(f"Constant with {sorted(attrs)}")


def _per_axis(v: torch.Tensor, ref: torch.Tensor, axis: int) -> torch.Tensor:
    """A scale or zero point, shaped to broadcast along `axis` of `ref` (or a scalar)."""
    if v.numel() == 1:
        return v.reshape(())
    shape = [1] * ref.ndim
    shape[axis % ref.ndim] = -1
    return v.reshape(shape)


def _quantize(x, scale, zp=None, *, axis):
    info = torch.iinfo(torch.uint8 if zp is None else zp.dtype)
    scale = _per_axis(scale.float(), x, axis)
    zpf = torch.zeros(()) if zp is None else _per_axis(zp.float(), x, axis)
    # torch.round rounds half to even, as QuantizeLinear does
    return torch.clamp(torch.round(x.float() / scale) + zpf, info.min, info.max)


def _dequantize(a, at):
    x, scale = a[0], a[1]
    zp = a[2] if len(a) > 2 and a[2] is not None else None
    axis = at.get("axis", 1)
    scale = _per_axis(scale.float(), x, axis)
    zp = torch.zeros(()) if zp is None else _per_axis(zp.float(), x, axis)
    return (x.float() - zp) * scale


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def _pads(at, nd):
    pads = list(at.get("pads", [0] * (2 * nd)))
    if at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise NotImplementedError(f"auto_pad={at['auto_pad']!r}")
    return pads[:nd], pads[nd:]


def _padded(x, at, nd, value=0.0):
    begin, end = _pads(at, nd)
    if begin == end:
        return x, begin
    flat = []
    for b, e in zip(reversed(begin), reversed(end)):
        flat += [b, e]
    return F.pad(x, flat, value=value), [0] * nd


def _conv(a, at):
    x, w = a[0], a[1]
    b = a[2] if len(a) > 2 else None
    nd = w.ndim - 2
    x, pad = _padded(x, at, nd)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(
        x,
        w.float(),
        None if b is None else b.float(),
        stride=at.get("strides", [1] * nd),
        padding=pad,
        dilation=at.get("dilations", [1] * nd),
        groups=at.get("group", 1),
    )


def _pool(kind):
    def run(a, at):
        x = a[0]
        nd = x.ndim - 2
        k = at["kernel_shape"]
        strides = at.get("strides", [1] * nd)
        ceil = bool(at.get("ceil_mode", 0))
        if kind == "max":
            x, pad = _padded(x, at, nd, value=float("-inf"))
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
            return fn(x, k, strides, pad, at.get("dilations", [1] * nd), ceil_mode=ceil)
        x, pad = _padded(x, at, nd) if at.get("count_include_pad", 0) else (x, _pads(at, nd)[0])
        if _pads(at, nd)[0] != _pads(at, nd)[1] and not at.get("count_include_pad", 0):
            raise NotImplementedError("asymmetric AveragePool padding")
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
        return fn(
            x,
            k,
            strides,
            pad,
            ceil_mode=ceil,
            count_include_pad=bool(at.get("count_include_pad", 0)),
        )

    return run


def _reduce_mean(a, at):
    x = a[0]
    axes = _ints(a[1]) if len(a) > 1 and a[1] is not None else at.get("axes")
    if not axes:
        if at.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.ndim))
    return x.mean(dim=tuple(axes), keepdim=bool(at.get("keepdims", 1)))


def _reshape(a, at):
    x, shape = a[0], _ints(a[1])
    if not at.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _gemm(a, at):
    A, B = a[0].float(), a[1].float()
    if at.get("transA", 0):
        A = A.t()
    if at.get("transB", 0):
        B = B.t()
    y = at.get("alpha", 1.0) * (A @ B)
    if len(a) > 2 and a[2] is not None:
        y = y + at.get("beta", 1.0) * a[2].float()
    return y


def _slice(a, at):
    x, starts, ends = a[0], _ints(a[1]), _ints(a[2])
    axes = _ints(a[3]) if len(a) > 3 and a[3] is not None else list(range(len(starts)))
    steps = _ints(a[4]) if len(a) > 4 and a[4] is not None else [1] * len(starts)
    idx = [slice(None)] * x.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st < 0:
            raise NotImplementedError("Slice with a negative step")
        idx[ax % x.ndim] = slice(s, e, st)  # python clamps out-of-range ends as ONNX does
    return x[tuple(idx)]


def _pad(a, at):
    x, pads = a[0], _ints(a[1])
    value = float(a[2]) if len(a) > 2 and a[2] is not None and a[2].numel() else 0.0
    axes = _ints(a[3]) if len(a) > 3 and a[3] is not None else list(range(x.ndim))
    mode = at.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    n = len(axes)
    per_axis = {ax % x.ndim: (pads[i], pads[i + n]) for i, ax in enumerate(axes)}
    flat = []
    for ax in reversed(range(min(per_axis, default=x.ndim), x.ndim)):
        flat += list(per_axis.get(ax, (0, 0)))
    if mode == "constant":
        return F.pad(x, flat, value=value)
    return F.pad(x, flat, mode={"reflect": "reflect", "edge": "replicate"}[mode])


def _gather(a, at):
    x, idx = a[0], a[1].long()
    axis = at.get("axis", 0) % x.ndim
    flat = idx.reshape(-1) % x.shape[axis]
    out = x.index_select(axis, flat)
    return out.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1 :])


def _layer_norm(a, at):
    x = a[0]
    axis = at.get("axis", -1) % x.ndim
    shape = x.shape[axis:]
    w = a[1].float() if len(a) > 1 and a[1] is not None else None
    b = a[2].float() if len(a) > 2 and a[2] is not None else None
    return F.layer_norm(
        x,
        shape,
        w if w is None else w.expand(shape),
        b if b is None else b.expand(shape),
        eps=at.get("epsilon", 1e-5),
    )


def _batch_norm(a, at):
    x, s, b, m, v = (t.float() for t in a[:5])
    return F.batch_norm(x, m, v, s, b, training=False, eps=at.get("epsilon", 1e-5))


def _clip(a, at):
    x = a[0]
    lo = a[1] if len(a) > 1 and a[1] is not None else at.get("min")
    hi = a[2] if len(a) > 2 and a[2] is not None else at.get("max")
    lo = None if lo is None else float(lo)
    hi = None if hi is None else float(hi)
    return torch.clamp(x, lo, hi)


def _squeeze(a, at):
    x = a[0]
    axes = _ints(a[1]) if len(a) > 1 and a[1] is not None else at.get("axes")
    if axes is None:
        return x.squeeze()
    for ax in sorted((ax % x.ndim for ax in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def _unsqueeze(a, at):
    x = a[0]
    axes = _ints(a[1]) if len(a) > 1 and a[1] is not None else at["axes"]
    rank = x.ndim + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return x


def _cast(a, at):
    from onnx import helper

    return a[0].to(torch.from_numpy(np.zeros(0, helper.tensor_dtype_to_np_dtype(at["to"]))).dtype)


def _hard_sigmoid(x, alpha, beta):
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


_OPS = {
    "QuantizeLinear": lambda a, at: _quantize(*a[:3], axis=at.get("axis", 1)),
    "DequantizeLinear": _dequantize,
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": lambda a, at: torch.matmul(a[0].float(), a[1].float()),
    "Relu": lambda a, at: torch.relu(a[0]),
    "Clip": _clip,
    "Sigmoid": lambda a, at: torch.sigmoid(a[0]),
    "Tanh": lambda a, at: torch.tanh(a[0]),
    "Erf": lambda a, at: torch.erf(a[0]),
    "Sqrt": lambda a, at: torch.sqrt(a[0]),
    "Exp": lambda a, at: torch.exp(a[0]),
    "Neg": lambda a, at: -a[0],
    "HardSigmoid": lambda a, at: _hard_sigmoid(a[0], at.get("alpha", 0.2), at.get("beta", 0.5)),
    "HardSwish": lambda a, at: a[0] * _hard_sigmoid(a[0], 1 / 6, 0.5),
    "LeakyRelu": lambda a, at: F.leaky_relu(a[0], at.get("alpha", 0.01)),
    "Softmax": lambda a, at: torch.softmax(a[0], dim=at.get("axis", -1)),
    "Add": lambda a, at: a[0] + a[1],
    "Sub": lambda a, at: a[0] - a[1],
    "Mul": lambda a, at: a[0] * a[1],
    "Div": lambda a, at: a[0] / a[1],
    "Pow": lambda a, at: torch.pow(a[0], a[1]),
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda a, at: a[0].mean(dim=tuple(range(2, a[0].ndim)), keepdim=True),
    "GlobalMaxPool": lambda a, at: a[0].amax(dim=tuple(range(2, a[0].ndim)), keepdim=True),
    "ReduceMean": _reduce_mean,
    "Reshape": _reshape,
    "Flatten": lambda a, at: a[0].reshape(
        int(np.prod(a[0].shape[: at.get("axis", 1) + (a[0].ndim if at.get("axis", 1) < 0 else 0)])),
        -1,
    ),
    "Transpose": lambda a, at: a[0].permute(*(at.get("perm") or range(a[0].ndim - 1, -1, -1))),
    "Concat": lambda a, at: torch.cat([t for t in a if t is not None], dim=at["axis"]),
    "Slice": _slice,
    "Gather": _gather,
    "Pad": _pad,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "LayerNormalization": _layer_norm,
    "BatchNormalization": _batch_norm,
    "Identity": lambda a, at: a[0],
    "Dropout": lambda a, at: a[0],
    "Cast": _cast,
    "Shape": lambda a, at: torch.tensor(
        a[0].shape[at.get("start", 0) : at.get("end")], dtype=torch.int64
    ),
    "Constant": lambda a, at: at["value"],
}
