"""ExecuTorch with the XNNPACK delegate: .pte files, fp32 or int8 (PT2E, XNNPACKQuantizer)."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ground.log import guarded
from targets import _snippets
from targets._base import Exported, ExportRequest, Runner, Tolerance
from targets._registry import register_backend

_INPUT_SHAPE = """
import json, sys
from executorch.runtime import Runtime, Verification
program = Runtime.get().load_program(sys.argv[1], verification=Verification.InternalConsistency)
print(json.dumps([int(s) for s in program.metadata("forward").input_tensor_meta(0).sizes()]))
"""


@register_backend
class ExecuTorchXnnpack:
    name = "executorch-xnnpack"
    title = "ExecuTorch"  # for people: messages and the bundle README
    libraries = ("executorch",)  # distributions whose versions go into every stage key
    filename = "model.pte"
    precisions = ("fp32", "int8")
    qat_precisions = ("int8",)
    runtime = "executorch.runtime"

    def can_run(self) -> tuple[bool, str]:
        return True, "ExecuTorch's Python runtime runs XNNPACK-delegated programs on this host"

    def export(self, req: ExportRequest) -> Exported:
        model, args = req.model.eval(), (req.example,)
        reference = model
        if req.precision == "int8":
            reference = (
                _quantize_qat(model, args, req.calibration, req.train)
                if req.train
                else _quantize_pt2e(model, args, req.calibration)
            )
        elif req.precision != "fp32":
            raise ValueError(f"{self.name}: precision {req.precision!r} not in {self.precisions}")
        # lower a copy: nothing lowering does may alias the reference the file is judged by
        edge = self._lower(torch.export.export(copy.deepcopy(reference), args))
        preflight = _delegation(edge.exported_program().graph_module)
        path = req.out_dir / self.filename
        edge.to_executorch().save(str(path))
        tol = (
            Tolerance(max_abs_rel=1e-4)
            if req.precision == "fp32"
            else Tolerance(min_sqnr_db=25.0, min_agreement=0.98)
        )
        io = {
            "inputs": [_tensor_io("x", req.example)],
            "outputs": [_tensor_io("logits", reference(req.example).detach())],
        }
        return Exported(path, req.precision, reference, io, tol, preflight=preflight)

    @staticmethod
    def _lower(ep):
        """The one lowering step every .pte goes through (the divergence search re-uses it)."""
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        return to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])

    def first_divergence(self, req: ExportRequest, x: np.ndarray, min_sqnr_db: float) -> dict:
        """Name the first layer whose output in the runtime departs from PyTorch.

        The model is lowered again, through the same path as the file, with every layer output
        tapped (executorch.devtools.intermediate_output_tap: the taps survive the XNNPACK
        delegate); the runtime's tapped values are compared with the same program run eagerly.
        For int8 the taps sit on quantize nodes (the int8 activations), because tapping
        dequantize or conv nodes of a quantized graph breaks lowering in this version.
        """
        from executorch.devtools.intermediate_output_tap import (
            FULL_TENSOR,
            compare_aot_runtime_dataframe,
            select_by_op_type,
            strip_taps_,
            tap_intermediate_outputs_,
        )
        from torch.utils._pytree import tree_flatten

        model, args = req.model.eval(), (torch.from_numpy(np.ascontiguousarray(x[:1])),)
        paths = _module_paths(model, args)
        if req.precision == "int8":
            model = _quantize_pt2e(model, args, req.calibration)
            ops = ("quantized_decomposed.quantize_per_tensor.default",)
        else:
            ops = (
                "aten.conv2d.default",
                "aten.linear.default",
                "aten.add.Tensor",
                "aten.relu.default",
                "aten.relu_.default",
                "aten.max_pool2d.default",
                "aten.adaptive_avg_pool2d.default",
                "aten.hardswish.default",
                "aten.layer_norm.default",
                "aten.softmax.int",
                "aten.matmul.default",
            )
        ep_t, specs = tap_intermediate_outputs_(
            torch.export.export(model, args), rules=[(select_by_op_type(*ops), FULL_TENSOR)]
        )
        aot, _ = tree_flatten(ep_t.module()(*args))
        edge = self._lower(ep_t)
        strip_taps_(edge)
        with tempfile.TemporaryDirectory() as tmp:
            pte = Path(tmp) / "tapped.pte"
            edge.to_executorch().save(str(pte))
            from executorch.runtime import Runtime

            rt = Runtime.get().load_program(pte).load_method("forward").execute(list(args))
        df = compare_aot_runtime_dataframe(specs, aot, list(rt))
        # a tap on a quantize node names the layer whose output it quantizes
        nodes = {n.name: n for n in ep_t.graph.nodes}
        source = {
            n: (
                nodes[n].args[0].name
                if req.precision == "int8"
                and n in nodes
                and nodes[n].args
                and hasattr(nodes[n].args[0], "name")
                else n
            )
            for n in df["node_name"]
        }
        rows = [
            {
                "node": source[r["node_name"]],
                "op": r["op_target"],
                "module": r["module_path"] or paths.get(source[r["node_name"]], ""),
                "sqnr_db": float(r["sqnr_db"]),
            }
            for _, r in df.iterrows()
        ]
        bad = [r for r in rows if r["sqnr_db"] < min_sqnr_db]
        return {
            "taps": len(rows),
            "threshold_db": min_sqnr_db,
            "first": bad[0] if bad else None,
            "layers": rows,
        }

    def load(self, path: Path, threads: int | None = None) -> Runner:
        from targets._standalone import load_pte

        return load_pte(path, threads)

    def describe(self, path: Path) -> dict:
        """Counted from the file: operators left outside any delegate, delegate calls."""
        from executorch.exir._serialize._program import deserialize_pte_binary

        program = deserialize_pte_binary(Path(path).read_bytes())
        program = getattr(program, "program", program)
        plan = program.execution_plan[0]
        ops = Counter()
        for chain in plan.chains:
            for ins in chain.instructions:
                kind = type(ins.instr_args).__name__
                if kind == "KernelCall":
                    op = plan.operators[ins.instr_args.op_index]
                    ops[op.name + (f".{op.overload}" if op.overload else "")] += 1
                elif kind == "DelegateCall":
                    ops["delegate:" + plan.delegates[ins.instr_args.delegate_index].id] += 1
        return {"file_ops": dict(ops), "bytes": Path(path).stat().st_size}

    def input_shape(self, path: Path) -> list[int]:
        """Read by loading the program, verified, in a child process: on some corrupt files the
        runtime aborts its process (its error message is not UTF-8 and pybind11 terminates),
        and a bad file must be an error that names it, not a crash."""
        proc = subprocess.run(
            [sys.executable, "-c", _INPUT_SHAPE, str(Path(path).resolve())],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode < 0:
            sig = signal.Signals(-proc.returncode).name
            raise ValueError(f"the ExecuTorch runtime died loading it ({sig})")
        if proc.returncode != 0:
            raise ValueError((proc.stderr.strip().splitlines() or ["(no output)"])[-1])
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def profile_extras(self, path: Path, x: np.ndarray) -> dict:
        """The memory plan and the per-op times, each an {"error": ...} if it cannot be had."""
        return {
            "memory": guarded(lambda: planned_memory(path)),
            "op_breakdown": guarded(lambda: op_breakdown(path, x, threads=1)),
        }

    def app_snippet(self, entry: dict, shape: list[int]) -> list[str]:
        return _snippets.executorch(entry, shape)

    def operator_times(self, path: Path, x: np.ndarray, threads: int, runs: int) -> list:
        """(name, p50 ms) of every XNNPACK operator in program order (ETDump)."""
        rows = _etdump_rows(Path(path), x, runs=runs, warmup=3, threads=threads)["rows"]
        skip = ("Method::execute", "DELEGATE_CALL")
        return [
            (r["name"], r["p50_ms"])
            for r in rows
            if r["block"] == "Execute" and r["name"] not in skip
        ]

    def arm64_delegate_check(self, path: Path, res: dict, host: dict) -> tuple[dict, list[str]]:
        """Every delegate call in the file ran on aarch64, with XNNPACK operators inside."""
        ops = self.describe(path)["file_ops"]
        in_file = {k.split(":", 1)[1]: n for k, n in ops.items() if k.startswith("delegate:")}
        ran = delegate_events(res["etdump"])
        problems = []
        if ran["delegate_calls"] != sum(in_file.values()):
            problems.append(
                f"{ran['delegate_calls']} delegate calls ran, the file has "
                f"{sum(in_file.values())} ({in_file})"
            )
        if not ran["delegated_ops"]:
            problems.append("no XNNPACK operator ran inside the delegate call")
        kernels = sorted({op.rsplit(" #", 1)[0] for op in ran["delegated_ops"]})
        return {
            **res["evidence"],
            "file_delegates": in_file,
            "delegate_calls": ran["delegate_calls"],
            "executions": ran["executions"],
            "xnnpack_ops_run": len(ran["delegated_ops"]),
            "xnnpack_kernels": kernels,
        }, problems


def _quantize_pt2e(model, args, calibration):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if calibration is None or len(calibration) == 0:
        raise ValueError("int8 quantization needs calibration images")
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)
    )
    prepared = prepare_pt2e(torch.export.export(model, args).module(), quantizer)
    with torch.no_grad():
        for i in range(len(calibration)):
            prepared(torch.from_numpy(calibration[i : i + 1]))
    return convert_pt2e(prepared)


def _quantize_qat(model, args, calibration, train):
    """PT2E quantization-aware training: fake-quant observers on a trainable export (batch
    dimension dynamic, so training batches of any size run), `train(prepared)`, convert. The
    scales are the ones the fake-quant observers learned in training; `calibration` is not
    used (it is recorded with the file all the same, as for every int8 export)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import (
        allow_exported_model_train_eval,
        move_exported_model_to_eval,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
    )
    batch = torch.export.Dim("batch", min=1, max=4096)
    two = (torch.cat([args[0], args[0]]),)  # batch 1 would be specialised to a constant
    ep = torch.export.export(copy.deepcopy(model).train(), two, dynamic_shapes=({0: batch},))
    prepared = prepare_qat_pt2e(ep.module(), quantizer)
    allow_exported_model_train_eval(prepared)  # so that .train()/.eval() switch BN and observers
    train(prepared)
    move_exported_model_to_eval(prepared)
    converted = convert_pt2e(prepared)
    # the file is exported at batch 1 from the converted module
    return torch.export.export(converted, args).module()


def _module_paths(model, args) -> dict[str, str]:
    """Node name -> the module it came from, from a float export (PT2E keeps node names)."""
    out = {}
    for n in torch.export.export(model, args).graph.nodes:
        stack = n.meta.get("nn_module_stack")
        if stack:
            out[n.name] = list(stack.values())[-1][0]
    return out


def _delegation(graph_module) -> dict:
    """Which ops went to XNNPACK and which stay on portable kernels (counted)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    # getitem nodes only unpack a delegate's outputs; they are not operators
    ops = {k: v for k, v in info.delegation_by_operator.items() if k != "getitem"}
    delegated = sum(b.delegated for b in ops.values())
    left = {k: b.non_delegated for k, b in sorted(ops.items()) if b.non_delegated}
    total = delegated + sum(left.values())
    return {
        "delegate": "XnnpackBackend",
        "delegated_subgraphs": info.num_delegated_subgraphs,
        "delegated_nodes": delegated,
        "non_delegated_nodes": sum(left.values()),
        "delegated_fraction": round(delegated / total, 4) if total else 0.0,
        "non_delegated_ops": left,
    }


def _tensor_io(name: str, t: torch.Tensor) -> dict:
    return {"name": name, "shape": list(t.shape), "dtype": "float32"}


# ---------------------------------------------------------------------------------------------
# counted and profiled facts about .pte files (issue 5), and the same as report figures


def _memory_plans(path: Path) -> dict:
    """The memory plan of each method: `non_const_buffer_sizes` of its execution plan, in bytes.

    Buffer 0 is reserved by the format (always 0). These buffers hold the tensors the runtime
    passes between instructions (inputs, outputs, non-delegated intermediates); an XNNPACK
    delegate allocates its own workspace for the activations inside it when the method loads,
    and that is not in the plan.
    """
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(Path(path).read_bytes())
    program = getattr(program, "program", program)
    plans = {}
    for plan in program.execution_plan:
        sizes = [int(s) for s in plan.non_const_buffer_sizes]
        plans[plan.name] = {
            "buffer_sizes": sizes,
            "planned_bytes": sum(sizes),
            "delegates": [d.id for d in plan.delegates],
        }
    return plans


def _etdump_rows(
    path: Path,
    x: np.ndarray,
    runs: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    workdir: Path | None = None,
) -> dict:
    """Run the program with ETDump on and read it back with the devtools Inspector.

    Returns {"rows": [{"name", "block", "delegated", "per_run", "p50_ms", "mean_ms",
    "min_ms", "samples"}], "runs", "warmup", "threads", "events_per_run"}: one row per profiler
    event in program order; the first `warmup` executions are dropped. With the XNNPACK
    delegate, the installed runtime logs one event per XNNPACK operator inside each
    DELEGATE_CALL (e.g. "Convolution (NHWC, F32) IGEMM #1"), timed by XNNPACK's own profiler
    at microsecond resolution.
    """
    import tempfile
    import warnings

    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    if threads is not None:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(threads)
    xt = torch.tensor(np.asarray(x, dtype=np.float32))
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        etdump, debug = Path(tmp) / "run.etdp", Path(tmp) / "debug.bin"
        program = Runtime.get().load_program(Path(path), enable_etdump=True, debug_buffer_size=0)
        method = program.load_method("forward")
        for _ in range(warmup + runs):
            method.execute([xt])
        program.write_etdump_result_to_file(str(etdump), str(debug))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Output Buffer not found": no debug data asked for
            inspector = Inspector(etdump_path=str(etdump))
    rows = []
    for block in inspector.event_blocks:
        for ev in block.events:
            if ev.perf_data is None:
                continue
            raw = list(ev.perf_data.raw)
            if block.name == "Execute":
                raw = raw[warmup:] if len(raw) > warmup else raw
            t = np.asarray(raw, dtype=float)
            rows.append(
                {
                    "name": ev.name,
                    "block": block.name,
                    "delegated": bool(ev.is_delegated_op),
                    "delegate": ev.delegate_backend_name,
                    "p50_ms": float(np.median(t)),
                    "mean_ms": float(t.mean()),
                    "min_ms": float(t.min()),
                    "samples": len(t),
                }
            )
    return {
        "rows": rows,
        "runs": runs,
        "warmup": warmup,
        "threads": threads,
        "time_unit": "ms (Inspector default: ETDump ns ticks -> ms)",
    }


def planned_memory(pte_path: Path) -> dict:
    """ExecuTorch's memory plan of a .pte as counted figures (forward method)."""
    plans = _memory_plans(Path(pte_path))
    name = "forward" if "forward" in plans else next(iter(plans))
    p = plans[name]
    on = (
        f"{Path(pte_path).name}, method {name}: sum of the execution plan's "
        f"non_const_buffer_sizes {p['buffer_sizes']}"
    )
    return {
        "planned_bytes": {"value": p["planned_bytes"], "unit": "B", "source": "counted", "on": on},
        "buffers": len([s for s in p["buffer_sizes"] if s]),
        "note": (
            "the plan covers tensors passed between instructions (inputs, outputs, "
            "non-delegated intermediates); the XNNPACK delegate allocates the activations "
            "inside it itself at load time, outside the plan"
            if p["delegates"]
            else "no delegate: every activation is in the plan"
        ),
    }


def op_breakdown(
    pte_path: Path,
    x,
    runs: int = 20,
    warmup: int = 3,
    threads: int | None = 1,
    top: int | None = None,
) -> dict:
    """ExecuTorch's own profiler (ETDump + devtools Inspector) on a .pte: time per event.

    Returns {"rows": [{"name", "block", "delegated", "p50": fig, "mean": fig, "share"}...],
    "top": names of the slowest operator rows, "total": the Method::execute figure}.
    Rows are in program order. "share" is the row's p50 over Method::execute's p50.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    r = _etdump_rows(Path(pte_path), x, runs=runs, warmup=warmup, threads=threads)
    on = (
        f"{Path(pte_path).name}, ExecuTorch ETDump via devtools Inspector, {threads} thread(s), "
        f"{runs} runs after {warmup} warm-up"
    )
    total = next((row for row in r["rows"] if row["name"] == "Method::execute"), None)
    tot = total["p50_ms"] if total else None
    rows = []
    for row in r["rows"]:
        o = on if row["block"] == "Execute" else f"{Path(pte_path).name}, load (once)"
        rows.append(
            {
                "name": row["name"],
                "block": row["block"],
                "delegated": row["delegated"],
                "p50": {
                    "value": round(row["p50_ms"], 6),
                    "unit": "ms",
                    "source": "measured",
                    "on": o,
                },
                "mean": {
                    "value": round(row["mean_ms"], 6),
                    "unit": "ms",
                    "source": "measured",
                    "on": o,
                },
                "samples": row["samples"],
                "share": (
                    round(row["p50_ms"] / tot, 4) if tot and row["block"] == "Execute" else None
                ),
            }
        )
    ops = [
        row
        for row in rows
        if row["block"] == "Execute" and row["name"] not in ("Method::execute", "DELEGATE_CALL")
    ]
    ops.sort(key=lambda row: -row["p50"]["value"])
    return {
        "rows": rows,
        "top": [row["name"] for row in ops[: top or 10]],
        "total": (
            rows[[x["name"] for x in rows].index("Method::execute")]["p50"] if total else None
        ),
        "resolution": "XNNPACK operator events are timed in whole microseconds",
    }


def delegate_events(etdump: Path) -> dict:
    """What an ETDump written on another machine (verify-arm64) shows of the delegate: its
    DELEGATE_CALL events, and the operator events the XNNPACK delegate logs inside them (named
    by XNNPACK's own profiler, e.g. "Convolution (NHWC, QC8) IGEMM #1"): evidence that the
    delegate itself ran there, not a fallback."""
    import warnings

    from executorch.devtools import Inspector

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Output Buffer not found": no debug data asked for
        inspector = Inspector(etdump_path=str(etdump))
    calls, ops, runs = 0, [], 0
    for block in inspector.event_blocks:
        for ev in block.events:
            if ev.name == "DELEGATE_CALL":
                calls += 1
                runs = max(runs, len(ev.perf_data.raw) if ev.perf_data else 0)
            elif ev.is_delegated_op:
                ops.append(ev.name)
    return {"delegate_calls": calls, "executions": runs, "delegated_ops": ops}
