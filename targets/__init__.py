"""Backends (one module each, one shape: export, load, run, describe) and targets (data)."""

import importlib

from targets._registry import (
    BackendChoice,
    Target,
    backends_by_suffix,
    get_backend,
    get_target,
    list_backends,
    list_targets,
    register_backend,
)

# Each module registers its backend with @register_backend; add a new backend here.
_BACKEND_MODULES = (
    "targets.executorch_xnnpack",
    "targets.tflite",
    "targets.onnx_runtime",
    "targets.coreml",
)
for _m in _BACKEND_MODULES:
    importlib.import_module(_m)

__all__ = [
    "BackendChoice",
    "Target",
    "backends_by_suffix",
    "get_backend",
    "get_target",
    "list_backends",
    "list_targets",
    "register_backend",
]
