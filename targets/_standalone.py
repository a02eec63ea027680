"""Runners that need only a runtime and numpy: no torch, no slimship imports.

`peak_rss` loads this file by path (not through the `targets` package, whose backends import
torch) in a fresh process, so that the memory measured is that of a process holding the
runtime and the file, as an app's would; the tflite and onnx backends' `load` use the same
functions. ExecuTorch's Python runtime takes torch tensors, so its runner imports torch.

A runner takes one float32 batch (1, C, H, W) and returns float32 logits (1, K); a fully int8
file is fed and read with its own scale and zero point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TFLITE_SIGNATURE = "serving_default"  # the one signature litert_torch.convert writes


def quantize_io(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float input -> the int8 a fully int8 file takes (model.json's quantization_formula)."""
    # as torch's quantize_per_tensor: round half to even of x * (1 / scale)
    q = np.round(x * np.float32(1.0 / scale)) + zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize_io(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.int32) - zero_point) * np.float32(scale)).astype(np.float32)


def load_tflite(path, threads: int | None = None):
    from ai_edge_litert.interpreter import Interpreter

    # The default op resolver (OpResolverType.AUTO == BUILTIN) applies TFLite's default
    # XNNPACK delegate when tensors are first allocated, fp32 and int8 alike ("INFO:
    # Created TensorFlow Lite XNNPACK delegate for CPU"); BUILTIN_WITHOUT_DEFAULT_DELEGATES
    # would turn it off. num_threads=None lets the runtime choose.
    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()  # applies the delegate now rather than on the first call
    sig = interp.get_signature_runner(TFLITE_SIGNATURE)
    ((in_name, in_d),) = sig.get_input_details().items()
    ((out_name, out_d),) = sig.get_output_details().items()
    in_dtype, (in_scale, in_zp) = in_d["dtype"], in_d["quantization"]
    out_dtype, (out_scale, out_zp) = out_d["dtype"], out_d["quantization"]

    def run(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if in_dtype == np.int8:
            x = quantize_io(x, in_scale, in_zp)
        y = sig(**{in_name: x})[out_name]
        if out_dtype == np.int8:
            y = dequantize_io(y, out_scale, out_zp)
        return np.array(y, dtype=np.float32)  # a copy, not a view of interpreter memory

    return run


def load_onnx(path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    in_name, out_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        out = sess.run([out_name], {in_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32)

    return run


def load_pte(path, threads: int | None = None):
    import torch
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


LOADERS = {"tflite": load_tflite, "onnx": load_onnx, "executorch-xnnpack": load_pte}
