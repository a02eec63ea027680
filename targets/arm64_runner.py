"""Runs one bundle file through its runtime inside the emulated arm64 root (issue 11).

This file is copied into the root and run there by its aarch64 Python, one process per file:

    python3 arm64_runner.py JOB.json

JOB.json: {"backend", "file", "inputs" (an .npy already in the dtype the file takes),
"outputs" (.npy to write), "result" (.json to write), "etdump" (ExecuTorch only)}.
It feeds the inputs one row at a time, writes the raw outputs and what the runtime shows about
its delegate, and nothing else: comparing is the host's job (pipeline/verify_arm64.py).
It imports none of slimship (torch and the project's code are not in the root) and only the
runtime a file needs. A failure is written to the result as one line, never raised.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import platform
import sys
import time
import traceback
import types
from pathlib import Path

import numpy as np

# getauxval keys and the HWCAP bits (arch/arm64/include/uapi/asm/hwcap.h) that decide which
# XNNPACK kernels run: plain NEON, fp16 arithmetic, the int8 dot product, int8 matrix multiply
AT_HWCAP, AT_HWCAP2 = 16, 26
HWCAP = {"fp": 0, "asimd": 1, "fphp": 9, "asimdhp": 10, "asimddp": 20, "sve": 22}
HWCAP2 = {"sve2": 1, "i8mm": 13, "bf16": 14, "sme": 23, "sme2": 37}


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    result = {"backend": job["backend"], "file": Path(job["file"]).name, "host": describe_host()}
    start = time.perf_counter()
    try:
        run = RUNTIMES[job["backend"]]
        outputs, evidence, versions = run(Path(job["file"]), np.load(job["inputs"]), job)
        np.save(job["outputs"], outputs)
        result.update(
            ok=True, evidence=evidence, versions=versions, output_shape=list(outputs.shape)
        )
    except Exception as e:  # noqa: BLE001  reported to the host, which names the file
        result.update(
            ok=False,
            error=f"{type(e).__name__}: {_first_line(e)}",
            traceback=traceback.format_exc(limit=4),
        )
    result["seconds_emulated"] = round(time.perf_counter() - start, 2)
    Path(job["result"]).write_text(json.dumps(result, indent=1))
    return 0


def describe_host() -> dict:
    """What this (emulated) machine is, as the guest sees it."""
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    hw, hw2 = libc.getauxval(AT_HWCAP), libc.getauxval(AT_HWCAP2)
    features = [k for k, bit in HWCAP.items() if hw >> bit & 1]
    features += [k for k, bit in HWCAP2.items() if hw2 >> bit & 1]
    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "libc": "-".join(platform.libc_ver()),
        "hwcaps": features,
    }


def _version(dist: str) -> str:
    return importlib.metadata.version(dist)


# ---------------------------------------------------------------------------------------------
# LiteRT / TFLite


def run_tflite(path: Path, x: np.ndarray, job: dict):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    n_file = len(interp._get_ops_details())  # before allocation: the file's own nodes
    interp.allocate_tensors()  # the default XNNPACK delegate is applied here
    nodes = interp._get_ops_details()
    delegates = nodes[n_file:]
    sig = interp.get_signature_runner(job.get("signature", "serving_default"))
    ((in_name, in_d),) = sig.get_input_details().items()
    ((out_name, _),) = sig.get_output_details().items()
    if np.dtype(in_d["dtype"]) != x.dtype:
        raise ValueError(
            f"the file takes {np.dtype(in_d['dtype']).name} input, the job gave {x.dtype.name}"
        )
    ys = [np.array(sig(**{in_name: x[i : i + 1]})[out_name]) for i in range(len(x))]
    delegated = _delegated(nodes[:n_file], delegates)
    evidence = {
        "file_nodes": n_file,
        "delegate_nodes": len(delegates),
        "delegate_node_names": sorted({d["op_name"] for d in delegates}),
        "delegated_file_nodes": len(delegated),
        "left_outside": sorted(
            {n["op_name"] for n in nodes[:n_file] if n["index"] not in delegated}
        ),
    }
    versions = {"ai-edge-litert": _version("ai-edge-litert"), "numpy": _version("numpy")}
    return np.concatenate(ys), evidence, versions


def _delegated(file_nodes: list, delegates: list) -> set[int]:
    """The file nodes a delegate node replaced: walk back from each delegate's outputs to its
    inputs (the same walk as targets/tflite.py's counted delegation on the host)."""
    producer = {int(t): n["index"] for n in file_nodes for t in n["outputs"]}
    delegated: set[int] = set()
    for d in delegates:
        boundary, stack = {int(t) for t in d["inputs"]}, [int(t) for t in d["outputs"]]
        while stack:
            t = stack.pop()
            i = producer.get(t)
            if t in boundary or i is None or i in delegated:
                continue
            delegated.add(i)
            stack.extend(int(u) for u in file_nodes[i]["inputs"] if u >= 0)
    return delegated


# ---------------------------------------------------------------------------------------------
# ExecuTorch


def run_executorch(path: Path, x: np.ndarray, job: dict):
    _skip_compiler_import()
    import torch
    from executorch.runtime import Runtime

    runtime = Runtime.get()
    backends = list(runtime.backend_registry.registered_backend_names)
    xnnpack = runtime.backend_registry.is_available("XnnpackBackend")
    if not xnnpack:  # a program with an XnnpackBackend delegate cannot run: say so first
        raise RuntimeError(f"XnnpackBackend is not available in this runtime ({backends})")
    program = runtime.load_program(path, enable_etdump=True, debug_buffer_size=0)
    method = program.load_method("forward")
    ys = [method.execute([torch.from_numpy(x[i : i + 1].copy())])[0].numpy() for i in range(len(x))]
    program.write_etdump_result_to_file(job["etdump"], job["etdump"] + ".debug")
    evidence = {
        "registered_backends": backends,
        "xnnpack_available": xnnpack,
        "method_loaded": True,
        "etdump": Path(job["etdump"]).name,
    }
    versions = {
        "executorch": _version("executorch"),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
    }
    return np.concatenate(ys), evidence, versions


def _skip_compiler_import() -> None:
    """Make `import executorch.exir._warnings` (done by the runtime's pybindings) load that one
    file without running executorch/exir/__init__.py, which imports the whole compiler (torch
    export, inductor passes: about 15 s under emulation) that running a program does not use."""
    import executorch

    name = "executorch.exir"
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(Path(p) / "exir") for p in executorch.__path__]  # a namespace package
        sys.modules[name] = pkg


# ---------------------------------------------------------------------------------------------
# ONNX Runtime


def run_onnx(path: Path, x: np.ndarray, job: dict):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    ys = [session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))]
    evidence = {"providers": session.get_providers()}
    return (
        np.concatenate(ys),
        evidence,
        {"onnxruntime": ort.__version__, "numpy": _version("numpy")},
    )


RUNTIMES = {"tflite": run_tflite, "executorch-xnnpack": run_executorch, "onnx": run_onnx}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
