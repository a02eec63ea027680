"""Latency measured on this host through each backend's own runtime."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np


def host() -> dict:
    return {"machine": platform.machine(), "processor": platform.processor() or "unknown",
            "cpus": os.cpu_count(), "system": platform.system(), "python": platform.python_version()}


def measure_latency(backend, path: Path, x: np.ndarray, threads: int, warmup: int, runs: int) -> dict:
    """Cold start (load + first inference) apart from steady state (after warm-up)."""
    t0 = time.perf_counter()
    runner = backend.load(path, threads=threads)
    t1 = time.perf_counter()
    runner(x)
    t2 = time.perf_counter()
    for _ in range(warmup):
        runner(x)
    times = []
    for _ in range(runs):
        s = time.perf_counter()
        runner(x)
        times.append((time.perf_counter() - s) * 1e3)
    t = np.asarray(times)
    on = f"{Path(path).name}, batch 1, {threads} thread(s), {runs} runs after {warmup} warm-up"
    ms = lambda v: {"value": round(float(v), 4), "unit": "ms", "source": "measured", "on": on}  # noqa: E731
    return {
        "threads": threads,
        "runs": runs,
        "p50": ms(np.percentile(t, 50)),
        "p90": ms(np.percentile(t, 90)),
        "std": ms(t.std()),
        "min": ms(t.min()),
        "load": {"value": round((t1 - t0) * 1e3, 3), "unit": "ms", "source": "measured",
                 "on": f"{Path(path).name}, loading the file in this process"},
        "first_inference": {"value": round((t2 - t1) * 1e3, 3), "unit": "ms", "source": "measured",
                            "on": f"{Path(path).name}, first call after load"},
    }
