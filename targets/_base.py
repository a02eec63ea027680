"""The one shape every backend has: export, load, run, describe, and the answers the pipeline
needs about its files (input shape, profile extras, app snippet, arm64 delegate check).

The pipeline talks to runtimes only through these objects; it never imports executorch,
litert_torch, coremltools or onnxruntime itself, nor keeps a table keyed by backend name. Backend modules import their library inside
the functions, so `cli.py --help` and `cli.py targets` stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

# A runner takes one preprocessed float32 batch (1, C, H, W) and returns float32 logits (1, K).
# Quantized I/O (e.g. a fully int8 .tflite) is handled inside the runner with the file's own
# scale and zero point, and described in `Exported.io` for the app team.
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Tolerance:
    """What "computes the same" means for one backend and precision.

    fp32 files are held to max |diff| relative to the output range; int8 files are compared with
    their quantized PyTorch reference by SQNR and top-1 agreement, because rounding in the
    integer kernels propagates through layers and a per-element bound of one or two output
    steps does not hold for deep networks.
    """

    max_abs_rel: float | None = None  # max |diff| / max |reference|
    min_sqnr_db: float | None = None
    min_agreement: float = 0.99

    def describe(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class ExportRequest:
    model: nn.Module  # fp32, eval mode
    example: torch.Tensor  # (1, C, H, W)
    precision: str  # "fp32" | "int8" | backend-specific (e.g. "fp16")
    calibration: np.ndarray | None  # (N, C, H, W) float32, from the training split
    out_dir: Path
    options: dict = field(default_factory=dict)
    # quantization-aware training, for backends that offer it: called with the prepared
    # (fake-quantized, trainable) module; the pipeline trains it on the training split
    train: Callable[[nn.Module], None] | None = None


@dataclass
class Exported:
    path: Path  # the written file (or directory, for .mlpackage)
    precision: str
    # the PyTorch computation the file must equal: the fp32 model, or for int8 the quantized
    # reference the backend's quantizer produced (fake-quant ops in torch)
    reference: Callable[[torch.Tensor], torch.Tensor]
    io: dict  # {"inputs": [...], "outputs": [...]} with names, shapes, dtypes, quantization
    tolerance: Tolerance
    notes: list[str] = field(default_factory=list)
    preflight: dict = field(default_factory=dict)  # ops, delegation: counted at export


class Backend(Protocol):
    name: str  # "<runtime>-<delegate>", e.g. "executorch-xnnpack"
    filename: str  # file name in the bundle, e.g. "model.pte"; its suffix names the file type
    precisions: tuple[str, ...]
    title: str  # the runtime as people name it, e.g. "ExecuTorch"
    libraries: tuple[str, ...]  # its Python distributions (versions recorded in run keys)
    qat_precisions: tuple[str, ...]  # precisions whose export honours ExportRequest.train
    runtime: str  # the module a fresh process imports to run a file (peak RSS)

    def can_run(self) -> tuple[bool, str]:
        """Whether files of this backend execute on this host, and if not, why."""

    def export(self, req: ExportRequest) -> Exported: ...

    def load(self, path: Path, threads: int | None = None) -> Runner: ...

    def describe(self, path: Path) -> dict:
        """Counted facts about a file: ops, delegated fraction, size."""

    def input_shape(self, path: Path) -> list[int]:
        """The first input's shape as the file declares it."""

    def profile_extras(self, path: Path, x: np.ndarray) -> dict:
        """Report keys this backend's profile adds beyond latency and peak RSS ({} if none)."""

    def app_snippet(self, entry: dict, shape: list[int]) -> list[str]:
        """README lines showing an app how to run the file (entry: model.json's backend)."""

    def arm64_delegate_check(self, path: Path, res: dict, host: dict) -> tuple[dict, list[str]]:
        """(evidence, problems): whether the ARM delegate really ran in verify-arm64's run."""


class BackendDefaults:
    """What a backend answers unless it knows better: no QAT, the input shape as `describe`
    lists the file's inputs, no profiling beyond latency and peak RSS."""

    qat_precisions: tuple[str, ...] = ()

    def input_shape(self, path: Path) -> list[int]:
        return [int(s) for s in self.describe(path)["inputs"][0]["shape"]]

    def profile_extras(self, path: Path, x: np.ndarray) -> dict:
        return {}


def run_all(runner: Runner, x: np.ndarray) -> np.ndarray:
    """Run a batch-1 file over every row of x: (N, C, H, W) -> (N, K)."""
    return np.concatenate([runner(x[i : i + 1]) for i in range(len(x))])


def sqnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    """10 log10(|ref|^2 / |ref - actual|^2); inf when they are identical."""
    noise = float(np.sum((reference.astype(np.float64) - actual) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(signal / noise) if signal > 0 else float("-inf")


def compare(reference: np.ndarray, actual: np.ndarray) -> dict:
    """Figures for one input set (all counted/measured on the same inputs)."""
    diff = np.abs(reference.astype(np.float64) - actual)
    scale = float(np.max(np.abs(reference))) or 1.0
    return {
        "inputs": len(reference),
        "max_abs_diff": float(diff.max()),
        "max_abs_diff_rel": float(diff.max() / scale),
        "sqnr_db": sqnr_db(reference, actual),
        "top1_agreement": float((reference.argmax(1) == actual.argmax(1)).mean()),
    }
