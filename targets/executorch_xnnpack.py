"""ExecuTorch with the XNNPACK delegate: .pte files, fp32 or int8 (PT2E, XNNPACKQuantizer)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from targets._base import ExportRequest, Exported, Runner, Tolerance
from targets._registry import register_backend


@register_backend
class ExecuTorchXnnpack:
    name = "executorch-xnnpack"
    filename = "model.pte"
    precisions = ("fp32", "int8")
    runtime = "executorch.runtime"

    def can_run(self) -> tuple[bool, str]:
        return True, "ExecuTorch's Python runtime runs XNNPACK-delegated programs on this host"

    def export(self, req: ExportRequest) -> Exported:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        model, args = req.model.eval(), (req.example,)
        reference = model
        if req.precision == "int8":
            reference = _quantize_pt2e(model, args, req.calibration)
        elif req.precision != "fp32":
            raise ValueError(f"{self.name}: precision {req.precision!r} not in {self.precisions}")
        ep = torch.export.export(reference, args)
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
        preflight = _delegation(edge.exported_program().graph_module)
        path = req.out_dir / self.filename
        edge.to_executorch().save(str(path))
        tol = (Tolerance(max_abs_rel=1e-4) if req.precision == "fp32"
               else Tolerance(min_sqnr_db=25.0, min_agreement=0.98))
        io = {"inputs": [_tensor_io("x", req.example)],
              "outputs": [_tensor_io("logits", reference(req.example).detach())]}
        return Exported(path, req.precision, reference, io, tol, preflight=preflight)

    def load(self, path: Path, threads: int | None = None) -> Runner:
        from executorch.runtime import Runtime, Verification

        if threads is not None:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(threads)
        program = Runtime.get().load_program(Path(path), verification=Verification.InternalConsistency)
        method = program.load_method("forward")

        def run(x: np.ndarray) -> np.ndarray:
            out = method.execute([torch.tensor(x, dtype=torch.float32)])  # a copy, dense strides
            return out[0].numpy()

        return run

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


def _quantize_pt2e(model, args, calibration):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if calibration is None or len(calibration) == 0:
        raise ValueError("int8 quantization needs calibration images")
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, args).module(), quantizer)
    with torch.no_grad():
        for i in range(len(calibration)):
            prepared(torch.from_numpy(calibration[i : i + 1]))
    return convert_pt2e(prepared)


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
