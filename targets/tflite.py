"""LiteRT (TFLite) through litert-torch: .tflite files, fp32 or fully int8 (PT2E, PT2EQuantizer).

fp32: `litert_torch.convert(model, (example,))`. int8: static, per-channel symmetric weights,
per-tensor affine activations, calibrated with PT2E and converted with `quant_config` so that
weights and activations, the model input and output included, are int8 (biases int32). The runner from `load`
still takes float32 (1, C, H, W) and returns float32 logits (1, K): it quantizes and
dequantizes with the file's own scale and zero point, which `Exported.io` records for the app.

The input keeps PyTorch's NCHW signature; litert-torch inserts the NCHW -> NHWC change inside
the graph (a RESHAPE when C == 1, a TRANSPOSE otherwise).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from targets import _snippets
from targets._base import BackendDefaults, Exported, ExportRequest, Runner, Tolerance
from targets._registry import register_backend
from targets._standalone import TFLITE_SIGNATURE as SIGNATURE
from targets._standalone import dequantize_io, load_tflite, quantize_io  # noqa: F401  (re-exported)

_QUANT_FORMULA = {
    "quantize": (
        "q = clamp(round(x / scale) + zero_point, -128, 127) as int8, rounding "
        "half to even as the PyTorch reference does"
    ),
    "dequantize": "x = (q - zero_point) * scale",
}


@register_backend
class Tflite(BackendDefaults):
    name = "tflite"
    title = "LiteRT"  # for people: messages and the bundle README
    libraries = (
        "litert-torch",
        "ai-edge-litert",
    )  # distributions whose versions go into every stage key
    filename = "model.tflite"
    precisions = ("fp32", "int8")
    runtime = "ai_edge_litert"

    def can_run(self) -> tuple[bool, str]:
        if importlib.util.find_spec("ai_edge_litert") is None:
            return False, "ai_edge_litert is not installed"
        return True, (
            "ai_edge_litert's Interpreter runs .tflite files on this host, "
            "with its default XNNPACK delegate"
        )

    def export(self, req: ExportRequest) -> Exported:
        import litert_torch

        if req.precision not in self.precisions:
            raise ValueError(f"{self.name}: precision {req.precision!r} not in {self.precisions}")
        model, args = req.model.eval(), (req.example,)
        path = req.out_dir / self.filename
        with _quiet():
            if req.precision == "fp32":
                reference, batched = model, True
                edge = litert_torch.convert(model, args)
            else:
                from litert_torch.quantize.quant_config import QuantConfig

                graph, quantizer, batched = _quantize_pt2e(model, args, req.calibration)
                reference = graph if batched else _row_by_row(graph)
                # without quant_config the file keeps float I/O and fake-quant float math
                edge = litert_torch.convert(
                    graph, args, quant_config=QuantConfig(pt2e_quantizer=quantizer)
                )
            edge.export(str(path))

        io = _io_from_file(path, list(req.example.shape))
        want = "int8" if req.precision == "int8" else "float32"
        got = {t["dtype"] for t in io["inputs"] + io["outputs"]}
        if got != {want}:
            raise RuntimeError(
                f"{self.name}: {req.precision} export wrote a file with "
                f"{sorted(got)} inputs/outputs, expected {want}"
            )
        notes = [
            (
                f"input layout {io['layout']} (the PyTorch signature); the file changes it "
                "to NHWC internally"
            )
        ]
        if req.precision == "int8" and not batched:
            notes.append("the quantized reference is the batch-1 graph, run row by row")
        if req.precision == "int8":
            notes.append(
                "input and output tensors are int8: quantize the preprocessed float "
                "input and dequantize the logits with io's scale and zero_point"
            )
        tol = (
            Tolerance(max_abs_rel=1e-4)
            if req.precision == "fp32"
            else Tolerance(min_sqnr_db=25.0, min_agreement=0.98)
        )
        info = self.describe(path)
        preflight = {
            "file_ops": info["file_ops"],
            "tensor_dtypes": info["tensor_dtypes"],
            **info["delegation"],
        }
        return Exported(path, req.precision, reference, io, tol, notes=notes, preflight=preflight)

    def load(self, path: Path, threads: int | None = None) -> Runner:
        return load_tflite(path, threads)

    def describe(self, path: Path) -> dict:
        """Counted from the file: operators, tensor dtypes, I/O; and what XNNPACK takes."""
        path = Path(path)
        ops, dtypes = _file_counts(path)
        io = _io_from_file(path)
        return {
            "file_ops": ops,
            "tensor_dtypes": dtypes,
            "inputs": io["inputs"],
            "outputs": io["outputs"],
            "bytes": path.stat().st_size,
            "delegation": _delegation(path),
        }

    def app_snippet(self, entry: dict, shape: list[int]) -> list[str]:
        return _snippets.tflite(entry, shape)

    def arm64_delegate_check(self, path: Path, res: dict, host: dict) -> tuple[dict, list[str]]:
        """XNNPACK took the same nodes on aarch64 as on this host."""
        ev = res["evidence"]
        want = (host.get("preflight") or {}).get("delegated_nodes")
        if isinstance(want, dict):  # a counted figure; bare in reports written before that
            want = want["value"]
        problems = []
        if ev["delegate_nodes"] == 0:
            problems.append(
                "no XNNPACK delegate node after allocation: the interpreter ran without "
                "its delegate"
            )
        elif want is not None and ev["delegated_file_nodes"] != want:
            problems.append(
                f"XNNPACK took {ev['delegated_file_nodes']} of {ev['file_nodes']} "
                f"nodes, {want} on this host"
            )
        evidence = {**ev, "host_delegated_nodes": want, "runtime_log": res.get("runtime_log", [])}
        return evidence, problems


def _quantize_pt2e(model, args, calibration):
    """(quantized graph, quantizer, batched): the graph has fake-quant ops in torch and takes
    any batch if `batched`, else batch 1 only."""
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if calibration is None or len(calibration) == 0:
        raise ValueError("int8 quantization needs calibration images")
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    )
    graph, batched = _export_for_quantization(model, args[0])
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(len(calibration)):  # one image at a time, as the executorch backend
            prepared(torch.from_numpy(calibration[i : i + 1]))
    # fold_quantize=True leaves int8 weight constants that the litert converter rejects
    quantized = convert_pt2e(prepared, fold_quantize=False)
    move_exported_model_to_eval(quantized)
    # an exported GraphModule refuses .eval(); litert_torch only reads `training` to warn
    # "converted in training mode", and the graph is already in eval form
    quantized.training = False
    # litert_torch.convert re-exports `quantized` with the batch-1 example, so the file's
    # input stays (1, C, H, W) whichever graph was quantized
    return quantized, quantizer, batched


def _export_for_quantization(model, example):
    """(graph, batched). strict=True: with non-strict export residual adds are left
    unannotated and stay float. Batch 1, as the file: litert_torch.convert re-exports with the
    batch-1 example anyway, and a dynamic batch costs a second, slower strict export; the
    reference runs the batch-1 graph row by row (`_row_by_row`)."""
    return torch.export.export(model, (example,), strict=True).module(), False


def _row_by_row(graph):
    """A batch-1 graph made to take (N, C, H, W)."""

    def reference(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([graph(x[i : i + 1]) for i in range(len(x))])

    return reference


def _io_from_file(path: Path, torch_shape: list[int] | None = None) -> dict:
    """Signature inputs/outputs as written in the file: what an app needs to feed it."""
    from ai_edge_litert.interpreter import Interpreter

    sig = Interpreter(model_path=str(path)).get_signature_runner(SIGNATURE)

    def tensor(name: str, d: dict) -> dict:
        t = {
            "name": name,
            "tensor": d["name"],
            "shape": [int(s) for s in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name,
        }
        if t["dtype"] in ("int8", "uint8"):
            scale, zp = d["quantization"]
            t["quantization"] = {"scale": float(scale), "zero_point": int(zp)}
        return t

    inputs = [tensor(k, d) for k, d in sig.get_input_details().items()]
    outputs = [tensor(k, d) for k, d in sig.get_output_details().items()]
    io = {"signature": SIGNATURE, "inputs": inputs, "outputs": outputs}
    if torch_shape is not None:  # the file alone cannot tell NCHW from NHWC
        shape = inputs[0]["shape"]
        nhwc = [torch_shape[i] for i in (0, 2, 3, 1)] if len(torch_shape) == 4 else None
        layout = "NCHW" if shape == torch_shape else "NHWC" if shape == nhwc else "unknown"
        io["layout"] = layout
        for t in inputs:
            t["layout"] = layout
    if any("quantization" in t for t in inputs + outputs):
        io["quantization_formula"] = dict(_QUANT_FORMULA)
    return io


def _file_counts(path: Path) -> tuple[dict, dict]:
    """Operator and tensor-dtype counts over every subgraph, read from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    ops, dtypes = Counter(), Counter()
    for g in range(model.SubgraphsLength()):
        sub = model.Subgraphs(g)
        for i in range(sub.OperatorsLength()):
            code = model.OperatorCodes(sub.Operators(i).OpcodeIndex())
            # builtin codes above 127 live only in BuiltinCode; older files only in the
            # deprecated int8 field
            b = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if b == schema.BuiltinOperator.CUSTOM:
                ops["CUSTOM:" + (code.CustomCode() or b"").decode()] += 1
            else:
                ops[op_names.get(b, f"BUILTIN_{b}")] += 1
        for i in range(sub.TensorsLength()):
            dtypes[type_names.get(sub.Tensors(i).Type(), "?")] += 1
    return dict(sorted(ops.items())), dict(sorted(dtypes.items()))


def _delegation(path: Path) -> dict:
    """Which nodes the runtime's default XNNPACK delegate takes (counted on this host).

    After allocation the interpreter lists the file's nodes followed by one DELEGATE node per
    delegated partition. A partition's nodes are found by walking back from the DELEGATE
    node's outputs to its inputs.
    """
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    n_file = len(interp._get_ops_details())  # before allocation: the file's nodes only
    interp.allocate_tensors()
    nodes = interp._get_ops_details()
    file_nodes, delegates = nodes[:n_file], nodes[n_file:]
    producer = {int(t): n["index"] for n in file_nodes for t in n["outputs"]}
    delegated: set[int] = set()
    for d in delegates:
        boundary = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        while stack:
            t = stack.pop()
            i = producer.get(t)
            if t in boundary or i is None or i in delegated:
                continue
            delegated.add(i)
            stack.extend(int(u) for u in file_nodes[i]["inputs"] if u >= 0)
    left = Counter(n["op_name"] for n in file_nodes if n["index"] not in delegated)
    return {
        "delegate": "XNNPACK (TFLite default delegate)",
        "delegated_subgraphs": len(delegates),
        "delegated_nodes": len(delegated),
        "non_delegated_nodes": sum(left.values()),
        "delegated_fraction": round(len(delegated) / n_file, 4) if n_file else 0.0,
        "non_delegated_ops": dict(sorted(left.items())),
    }


@contextlib.contextmanager
def _quiet():
    """Turn off litert_torch's per-stage progress printing for the conversion only."""
    key, old = "LITERT_TORCH_SHOW_PROGRESS", os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ[key] = "n"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
