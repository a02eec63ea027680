"""Core ML: .mlpackage (mlprogram) directories, fp32, fp16 or int8 weight-only.

Conversion: `torch.export.export(model).run_decompositions({})` (coremltools rejects the
training-dialect program torch.export returns by default) -> `ct.convert(..., convert_to=
"mlprogram")` with one input `x` and one output `logits`, at `minimum_deployment_target`
(option, default iOS17). fp32 and fp16 differ in `compute_precision`; I/O is float32 in
every file (at iOS16+ an fp16 program would otherwise get float16 I/O; the fp16 file casts
inside); int8 is the fp32 program
with `linear_quantize_weights` (per-channel, symmetric, every weight: weight_threshold=0), so
weights are stored int8 and dequantized by `constexpr_affine_dequantize` ops at load time while
activations and arithmetic stay fp32 (weight-only: activation quantization needs Core ML
prediction for calibration, which exists only on macOS).

Core ML executes only on macOS. On other hosts `can_run()` is False, `load()` raises, and the
pipeline reports the file as structurally checked: `describe()` reads the package (spec version,
model type, I/O names, shapes and dtypes, the MIL op list, size) and `structural_check()` compares
it with what was exported. Numbers that can be checked without running it: `weights_check()`
reads every conv/linear weight of the (decompressed) program and compares it with the torch
model's batch-norm-folded weights; `export` records that in `preflight["weights_check"]`.

References for parity (when a Mac runs the file): fp32 and fp16 files are compared with the fp32
model; int8 with the fp32 model whose conv/linear weights are replaced by the file's
dequantized int8 weights (the exact PyTorch twin of weight-only quantization).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from targets import _snippets
from targets._base import BackendDefaults, Exported, ExportRequest, Runner, Tolerance
from targets._registry import register_backend

INPUT, OUTPUT = "x", "logits"
DEFAULT_TARGET = "iOS17"
OPTIONS = ("minimum_deployment_target",)
# Core ML's kernels (CPU/GPU) differ from torch's in summation order; fp16 computes in half
# precision end to end. Only a Mac can check these.
TOLERANCES = {
    "fp32": Tolerance(max_abs_rel=1e-3),
    "fp16": Tolerance(min_sqnr_db=35.0, min_agreement=0.99),
    "int8": Tolerance(max_abs_rel=1e-3),  # vs the torch twin holding the file's int8 weights
    "palettize6": Tolerance(max_abs_rel=1e-3),  # vs the twin holding the file's palette weights
    "palettize4": Tolerance(max_abs_rel=1e-3),
}
# palettization (k-means, one lookup table per tensor): weights stored as n-bit indices
PALETTE_BITS = {"palettize6": 6, "palettize4": 4}
# weights_check: max |file weight - torch folded weight| / max |torch weight|, per tensor.
# int8 per-channel symmetric: at most half a step, scale = max|w_channel| / 127.
WEIGHT_BOUNDS = {"fp32": 1e-5, "fp16": 1e-3, "int8": 0.5 / 127 + 1e-4}
_ARRAY_KINDS = ("conv", "linear", "conv_transpose")


@register_backend
class CoreML(BackendDefaults):
    name = "coreml"
    title = "Core ML"  # for people: messages and the bundle README
    libraries = ("coremltools",)  # distributions whose versions go into every stage key
    filename = "model.mlpackage"
    precisions = ("fp32", "fp16", "int8", "palettize6", "palettize4")
    runtime = "coremltools"

    def can_run(self) -> tuple[bool, str]:
        if sys.platform == "darwin":
            return True, "Core ML predicts on macOS"
        return False, (
            f"Core ML prediction needs macOS (this host is {sys.platform}); the "
            ".mlpackage is checked structurally and by its weights only"
        )

    def export(self, req: ExportRequest) -> Exported:
        import coremltools as ct

        if req.precision not in self.precisions:
            raise ValueError(f"{self.name}: precision {req.precision!r} not in {self.precisions}")
        unknown = sorted(set(req.options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {unknown}; known: {list(OPTIONS)}")
        target_name = str(req.options.get("minimum_deployment_target", DEFAULT_TARGET))
        if target_name not in ct.target.__members__:
            raise ValueError(
                f"{self.name}: minimum_deployment_target {target_name!r} not one of "
                f"{sorted(ct.target.__members__)}"
            )
        model, args = req.model.eval(), (req.example,)
        timings = {}
        start = time.perf_counter()
        ep = torch.export.export(model, args).run_decompositions({})
        precision = ct.precision.FLOAT16 if req.precision == "fp16" else ct.precision.FLOAT32
        with _quiet():  # coremltools draws a progress bar per pass on stderr
            ml = ct.convert(
                ep,
                convert_to="mlprogram",
                minimum_deployment_target=ct.target[target_name],
                inputs=[
                    ct.TensorType(name=INPUT, shape=tuple(req.example.shape), dtype=np.float32)
                ],
                outputs=[ct.TensorType(name=OUTPUT, dtype=np.float32)],
                compute_precision=precision,
            )
        timings["convert_s"] = round(time.perf_counter() - start, 2)
        if req.precision == "int8":
            start = time.perf_counter()
            ml = _quantize_weights(ml)
            timings["linear_quantize_weights_s"] = round(time.perf_counter() - start, 2)
        elif req.precision in PALETTE_BITS:
            start = time.perf_counter()
            ml = _palettize_weights(ml, PALETTE_BITS[req.precision])
            timings["palettize_weights_s"] = round(time.perf_counter() - start, 2)
        path = req.out_dir / self.filename
        _atomic_save(ml, path)

        desc = self.describe(path)
        folded = _folded_torch_weights(ep)
        wcheck = weights_check(path, folded, req.precision)
        reference = model
        notes = [
            f"minimum_deployment_target {target_name}",
            (
                "Core ML files execute only on macOS; off macOS the check is structural plus "
                "weights (preflight.weights_check)"
            ),
        ]
        if req.precision == "int8" or req.precision in PALETTE_BITS:
            reference = _weight_twin(model, folded, path, req.precision)
            notes.append(
                "reference: the fp32 model holding the file's decompressed "
                f"{req.precision} weights (weight-only compression; activations stay "
                "fp32)"
            )
        preflight = {
            "file_ops": desc["file_ops"],
            "specification_version": desc["specification_version"],
            "weights_check": wcheck,
            "timings": timings,
        }
        io = {"inputs": desc["inputs"], "outputs": desc["outputs"]}
        return Exported(
            path,
            req.precision,
            reference,
            io,
            TOLERANCES[req.precision],
            notes=notes,
            preflight=preflight,
        )

    def load(self, path: Path, threads: int | None = None) -> Runner:
        ok, why = self.can_run()
        if not ok:
            raise RuntimeError(f"cannot load {Path(path).name}: {why}")
        import coremltools as ct

        # Core ML picks its own threads and compute units (CPU/GPU/Neural Engine); `threads`
        # has no Core ML equivalent
        ml = ct.models.MLModel(str(path))

        def run(x: np.ndarray) -> np.ndarray:
            out = ml.predict({INPUT: np.ascontiguousarray(x, dtype=np.float32)})[OUTPUT]
            return np.asarray(out, dtype=np.float32)

        return run

    def describe(self, path: Path) -> dict:
        """Read from the package on any host: spec, I/O, MIL ops, size, structural problems."""
        import coremltools as ct

        path = Path(path)
        spec = ct.utils.load_spec(str(path))
        kind = spec.WhichOneof("Type")
        ops, opsets = Counter(), set()
        if kind == "mlProgram":
            for fn in spec.mlProgram.functions.values():
                for opset, block in fn.block_specializations.items():
                    opsets.add(opset)
                    _count_ops(block, ops)
        out = {
            "specification_version": spec.specificationVersion,
            "model_type": kind,
            "opsets": sorted(opsets),
            "inputs": [_feature_io(f) for f in spec.description.input],
            "outputs": [_feature_io(f) for f in spec.description.output],
            "file_ops": dict(sorted(ops.items())),
            "bytes": _package_bytes(path),
        }
        out["structural_problems"] = _self_problems(out)
        return out

    def structural_check(self, path: Path, expected_io: dict) -> dict:
        return structural_check(path, expected_io)

    def app_snippet(self, entry: dict, shape: list[int]) -> list[str]:
        return _snippets.coreml(entry, shape)

    def arm64_delegate_check(self, path: Path, res: dict, host: dict) -> tuple[dict, list[str]]:
        """Never asked: Core ML has no aarch64 Linux runtime, so verify-arm64 does not run it."""
        raise NotImplementedError(f"{self.name} has no aarch64 Linux runtime")


def structural_check(path: Path, expected_io: dict) -> dict:
    """Compare the package with `Exported.io`-style expectations; {"ok", "problems", "describe"}.

    expected_io: {"inputs": [{"name", "shape"[, "dtype"]}...], "outputs": [...]}; an output
    shape may be omitted (or hold None entries) where it is not known in advance.
    """
    from targets import get_backend

    desc = get_backend("coreml").describe(path)
    problems = list(desc["structural_problems"])
    for side in ("inputs", "outputs"):
        got = {f["name"]: f for f in desc[side]}
        want = expected_io.get(side, [])
        if sorted(got) != sorted(w["name"] for w in want):
            problems.append(
                f"{side}: names {sorted(got)} != expected {sorted(w['name'] for w in want)}"
            )
        for w in want:
            g = got.get(w["name"])
            if g is None:
                continue
            if (
                w.get("shape") is not None
                and all(s is not None for s in w["shape"])
                and list(g["shape"]) != list(w["shape"])
            ):
                problems.append(f"{side[:-1]} {w['name']}: shape {g['shape']} != {w['shape']}")
            if w.get("dtype") and g["dtype"] != w["dtype"]:
                problems.append(f"{side[:-1]} {w['name']}: dtype {g['dtype']} != {w['dtype']}")
    return {"ok": not problems, "problems": problems, "describe": desc}


def weights_check(path: Path, folded: list[dict], precision: str) -> dict:
    """Every conv/linear weight of the package (decompressed) against the torch model's
    batch-norm-folded ones: max |diff| / max |torch| per tensor, matched by shape (the closest
    same-shaped torch tensor), judged against WEIGHT_BOUNDS[precision]. Biases are compared and
    reported but not judged (see `bias_differs`). `folded` comes from `_folded_torch_weights`.
    A weight-level check only: it says the file holds the model's weights at the expected
    precision, not that the ops between them compute what torch computes."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    with _quiet():
        prog = cto.decompress_weights(
            ct.models.MLModel(str(path), skip_model_load=True)
        )._mil_program
    per_op, unmatched, unread = {}, [], []
    for fn in prog.functions.values():
        for op in _walk_ops(fn):
            if op.op_type not in _ARRAY_KINDS:
                continue
            w = op.weight.val if op.weight is not None else None
            if w is None:
                unread.append(op.name)
                continue
            b = op.bias.val if getattr(op, "bias", None) is not None else None
            best = None
            for cand in folded:
                if cand["weight"].shape != w.shape:
                    continue
                rw = _rel(w, cand["weight"])
                rb = (
                    _rel(b, cand["bias"])
                    if b is not None and cand["bias"] is not None and cand["bias"].shape == b.shape
                    else None
                )
                if best is None or rw < best[0]:
                    best = (rw, rb, cand["name"])
            if best is None:
                unmatched.append(op.name)
            else:
                per_op[op.name] = {
                    "torch": best[2],
                    "weight_rel": float(f"{best[0]:.3g}"),
                    "bias_rel": None if best[1] is None else float(f"{best[1]:.3g}"),
                }
    if precision in PALETTE_BITS:
        return _palette_check(per_op, unmatched, unread, folded, prog, PALETTE_BITS[precision])
    bound = WEIGHT_BOUNDS[precision]
    worst_w = max((v["weight_rel"] for v in per_op.values()), default=None)
    worst_b = max(
        (v["bias_rel"] for v in per_op.values() if v["bias_rel"] is not None), default=None
    )
    problems = [
        f"{k}: weight rel diff {v['weight_rel']:.3g} > {bound:.3g}"
        for k, v in per_op.items()
        if v["weight_rel"] > bound
    ]
    problems += [f"{k}: no torch weight of that shape" for k in unmatched]
    problems += [f"{k}: weight is computed at run time, not a constant" for k in unread]
    # biases are reported, not judged: the MIL optimizer legitimately folds a following constant
    # add into a conv's bias (hardsigmoid's "+ 3" in MobileNetV3 blocks, for one)
    bias_differs = sorted(
        k
        for k, v in per_op.items()
        if v["bias_rel"] is not None and v["bias_rel"] > max(bound, 1e-3)
    )
    return {
        "ok": not problems and bool(per_op),
        "checked": len(per_op),
        "bound": bound,
        "max_weight_rel_diff": worst_w,
        "max_bias_rel_diff": worst_b,
        "bias_differs": bias_differs,
        "problems": problems,
        "per_op": per_op,
    }


# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def _quantize_weights(ml):
    import coremltools.optimize.coreml as cto

    cfg = cto.OptimizationConfig(
        global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0
        )
    )
    with _quiet():
        return cto.linear_quantize_weights(ml, cfg)


def _palettize_weights(ml, nbits: int):
    import coremltools.optimize.coreml as cto

    cfg = cto.OptimizationConfig(
        global_config=cto.OpPalettizerConfig(
            mode="kmeans", nbits=nbits, granularity="per_tensor", weight_threshold=0
        )
    )
    with _quiet():
        return cto.palettize_weights(ml, cfg)


def _atomic_save(ml, path: Path) -> None:
    """Save the package beside its final place, then swap it in (a directory: two renames)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        ml.save(str(tmp / path.name))
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp / path.name, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _count_ops(block, counter: Counter) -> None:
    for op in block.operations:
        counter[op.type] += 1
        for inner in op.blocks:
            _count_ops(inner, counter)


def _walk_ops(block):
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _walk_ops(inner)


def _feature_io(f) -> dict:
    from coremltools.proto import FeatureTypes_pb2 as ft

    kind = f.type.WhichOneof("Type")
    if kind != "multiArrayType":
        return {"name": f.name, "type": kind}
    arr = f.type.multiArrayType
    return {
        "name": f.name,
        "shape": [int(s) for s in arr.shape],
        "dtype": ft.ArrayFeatureType.ArrayDataType.Name(arr.dataType).lower(),
    }


def _package_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _self_problems(d: dict) -> list[str]:
    problems = []
    if d["model_type"] != "mlProgram":
        problems.append(f"model type {d['model_type']!r}, expected mlProgram")
    if not d["inputs"] or not d["outputs"]:
        problems.append("no inputs or no outputs")
    for f in d["inputs"] + d["outputs"]:
        if "shape" not in f:
            problems.append(f"{f['name']}: {f.get('type')} instead of a multi-array")
        elif not f["shape"] and f in d["inputs"]:
            problems.append(f"input {f['name']}: no fixed shape")
    if not d["file_ops"]:
        problems.append("the program has no operations")
    return problems


def _palette_check(per_op, unmatched, unread, folded, prog, nbits: int) -> dict:
    """A palettized tensor holds at most 2^nbits distinct values, and each weight is the
    palette entry nearest its torch value (k-means assignment): checked per element, within
    1e-5 of the tensor's range (the program folds batch norm in float32, torch in float64)."""
    by_name = {c["name"]: c for c in folded}
    ops = {op.name: op for fn in prog.functions.values() for op in _walk_ops(fn)}
    problems = []
    for name, v in per_op.items():
        w = np.asarray(ops[name].weight.val, dtype=np.float64)
        t = by_name[v["torch"]]["weight"]
        palette = np.unique(w)
        v["palette_size"] = int(palette.size)
        if palette.size > 2**nbits:
            problems.append(f"{name}: {palette.size} distinct weights > 2^{nbits}")
            continue
        nearest = palette[np.abs(t.reshape(-1, 1) - palette.reshape(1, -1)).argmin(1)]
        slack = np.abs(w.reshape(-1) - t.reshape(-1)) - np.abs(nearest - t.reshape(-1))
        scale = float(np.max(np.abs(t))) or 1.0
        v["not_nearest"] = int((slack > 1e-5 * scale).sum())
        if v["not_nearest"]:
            problems.append(
                f"{name}: {v['not_nearest']} weights are not their nearest palette entry"
            )
    problems += [f"{k}: no torch weight of that shape" for k in unmatched]
    problems += [f"{k}: weight is computed at run time, not a constant" for k in unread]
    worst = max((v["weight_rel"] for v in per_op.values()), default=None)
    return {
        "ok": not problems and bool(per_op),
        "checked": len(per_op),
        "bound": f"each weight the nearest of at most 2^{nbits} palette entries",
        "max_weight_rel_diff": worst,
        "problems": problems,
        "per_op": per_op,
    }


def _rel(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = float(np.max(np.abs(b))) or 1.0
    return float(np.max(np.abs(a - b)) / scale) if a.size else 0.0


def _folded_torch_weights(ep) -> list[dict]:
    """conv/linear weights of an exported program, batch norm folded in where a batch norm
    (inference form) directly follows: [{"name", "param", "weight", "bias", "bn_scale"}]."""
    aten = torch.ops.aten
    convs = {
        aten.convolution.default,
        aten.conv2d.default,
        aten.conv1d.default,
        aten.conv3d.default,
        aten.linear.default,
    }
    bns = {aten._native_batch_norm_legit_no_training.default, aten.batch_norm.default}
    sig = ep.graph_signature
    lookup = {
        **{k: ("p", v) for k, v in sig.inputs_to_parameters.items()},
        **{k: ("b", v) for k, v in sig.inputs_to_buffers.items()},
        **{k: ("c", v) for k, v in sig.inputs_to_lifted_tensor_constants.items()},
    }

    def value(node):
        if node is None or getattr(node, "op", None) != "placeholder" or node.name not in lookup:
            return None, None
        _, fqn = lookup[node.name]
        t = ep.state_dict.get(fqn, ep.constants.get(fqn))
        return (None if t is None else t.detach().double()), fqn

    out = []
    for node in ep.graph.nodes:
        if node.op != "call_function" or node.target not in convs:
            continue
        if node.target == aten.convolution.default and node.args[6]:  # transposed
            continue
        w, fqn = value(node.args[1])
        if w is None:
            continue
        b, _ = value(node.args[2]) if len(node.args) > 2 else (None, None)
        scale = None
        users = list(node.users)
        if len(users) == 1 and users[0].target in bns and users[0].args[0] is node:
            bn = users[0]
            if bn.target == aten.batch_norm.default:  # (x, w, b, mean, var, training, mom, eps)
                gamma, beta, mean, var = (value(a)[0] for a in bn.args[1:5])
                eps = bn.args[7]
            else:  # (x, w, b, mean, var, momentum, eps)
                gamma, beta, mean, var = (value(a)[0] for a in bn.args[1:5])
                eps = bn.args[6]
            if mean is not None and var is not None:
                scale = (gamma if gamma is not None else torch.ones_like(var)) / torch.sqrt(
                    var + eps
                )
                shift = beta if beta is not None else torch.zeros_like(var)
                b = ((b if b is not None else torch.zeros_like(mean)) - mean) * scale + shift
                w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
        out.append(
            {
                "name": fqn,
                "param": fqn,
                "weight": w.numpy(),
                "bias": None if b is None else b.numpy(),
                "bn_scale": None if scale is None else scale.numpy(),
            }
        )
    return out


def _weight_twin(model, folded: list[dict], path: Path, precision: str = "int8"):
    """The fp32 model with each conv/linear weight replaced by the package's decompressed one
    (divided by the following batch norm's scale, so that folding gives the file's weight)."""
    wc = weights_check(path, folded, precision)
    by_param = {c["param"]: c for c in folded}
    twin = copy.deepcopy(model).eval()
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    with _quiet():
        prog = cto.decompress_weights(
            ct.models.MLModel(str(path), skip_model_load=True)
        )._mil_program
    ops = {op.name: op for fn in prog.functions.values() for op in _walk_ops(fn)}
    with torch.no_grad():
        for op_name, match in wc["per_op"].items():
            c = by_param[match["torch"]]
            w = torch.from_numpy(np.asarray(ops[op_name].weight.val, dtype=np.float64))
            if c["bn_scale"] is not None:
                w = w / torch.from_numpy(c["bn_scale"]).reshape(-1, *([1] * (w.ndim - 1)))
            try:
                p = twin.get_parameter(c["param"])
            except AttributeError:  # a weight held in a buffer: left as it is
                continue
            p.copy_(w.to(p.dtype).reshape(p.shape))
    return twin
