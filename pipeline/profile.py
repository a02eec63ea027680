"""Latency measured on this host through each backend's own runtime."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np


def host() -> dict:
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpus": os.cpu_count(),
        "system": platform.system(),
        "python": platform.python_version(),
    }


def measure_latency(
    backend, path: Path, x: np.ndarray, threads: int, warmup: int, runs: int
) -> dict:
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
    ms = lambda v: {"value": round(float(v), 4), "unit": "ms", "source": "measured", "on": on}
    return {
        "threads": threads,
        "runs": runs,
        "p50": ms(np.percentile(t, 50)),
        "p90": ms(np.percentile(t, 90)),
        "std": ms(t.std()),
        "min": ms(t.min()),
        "load": {
            "value": round((t1 - t0) * 1e3, 3),
            "unit": "ms",
            "source": "measured",
            "on": f"{Path(path).name}, loading the file in this process",
        },
        "first_inference": {
            "value": round((t2 - t1) * 1e3, 3),
            "unit": "ms",
            "source": "measured",
            "on": f"{Path(path).name}, first call after load",
        },
    }


# ---------------------------------------------------------------------------------------------
# issue 5: peak RSS of a fresh process (a backend's own extras: Backend.profile_extras)

_RSS_SCRIPT = r"""
import importlib, importlib.util, json, sys, time
import numpy as np
# the runners by file path: the `targets` package would import torch for every backend
spec = importlib.util.spec_from_file_location("_standalone", {standalone!r})
standalone = importlib.util.module_from_spec(spec)
spec.loader.exec_module(standalone)
importlib.import_module({runtime!r})          # the runtime's own import, before the file
x = np.random.default_rng(0).standard_normal({shape!r}).astype(np.float32)
def status():
    d = {{}}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                k, v = line.split(":")
                d[k] = int(v.split()[0]) * 1024  # kB
    return d
before = status()
try:  # reset the high-water mark to the current RSS (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
t0 = time.perf_counter()
run = standalone.LOADERS[{backend!r}]({path!r}, threads={threads!r})
y = run(x)
t1 = time.perf_counter()
after = status()
print(json.dumps({{"import_peak": before["VmHWM"], "baseline": before["VmRSS"],
                  "peak": after["VmHWM"], "after": after["VmRSS"], "reset": reset,
                  "load_and_run_s": t1 - t0, "out_shape": list(np.asarray(y).shape)}}))
"""


def peak_rss(
    backend_name: str, path: Path, input_shape, threads: int | None = 1, timeout_s: float = 300
) -> dict:
    """Peak resident memory of a fresh Python process that imports the backend's runtime (and
    nothing of slimship's or torch's unless the runtime needs it: ExecuTorch's Python runtime
    does), loads `path`, and runs it once on a random float32 input of `input_shape`.

    Figures (bytes, measured, from /proc/self/status of the child):
    - `baseline_rss`: VmRSS after the imports (Python, numpy, torch, the runtime), before the
      file is loaded;
    - `peak_rss`: VmHWM at the end, the high-water mark having been reset to the baseline
      (`echo 5 > /proc/self/clear_refs`) just before loading, so it is the peak while loading and
      running the file (the baseline included);
    - `file_rss`: peak - baseline, what the file added.
    Not `getrusage().ru_maxrss`: on Linux a child started by vfork/exec (Python's subprocess)
    inherits its parent's high-water mark in ru_maxrss, and the import peak would hide the file.
    """
    import json
    import subprocess
    import sys

    from targets import get_backend

    root = str(Path(__file__).resolve().parent.parent)
    code = _RSS_SCRIPT.format(
        standalone=str(Path(root) / "targets" / "_standalone.py"),
        runtime=get_backend(backend_name).runtime,
        backend=backend_name,
        shape=tuple(int(s) for s in input_shape),
        path=str(Path(path).resolve()),
        threads=threads,
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=root,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"peak_rss: {backend_name} on {Path(path).name} failed: {tail[0]}")
    return _rss_figures(
        json.loads(proc.stdout.strip().splitlines()[-1]), backend_name, path, threads, input_shape
    )


def _rss_figures(r: dict, backend_name: str, path: Path, threads, input_shape) -> dict:
    """The child's /proc readings as report figures."""
    on = (
        f"{Path(path).name} via {backend_name}, fresh `python -c` process, {threads} "
        f"thread(s), input {tuple(input_shape)}"
    )
    peak_on = on + (
        ", load + one inference: VmHWM after resetting it at the baseline"
        if r["reset"]
        else ", whole process: VmHWM (clear_refs not permitted, the import peak is included)"
    )
    return {
        "peak_rss": {"value": r["peak"], "unit": "B", "source": "measured", "on": peak_on},
        "baseline_rss": {
            "value": r["baseline"],
            "unit": "B",
            "source": "measured",
            "on": on + ", after imports, before loading the file: VmRSS",
        },
        "file_rss": {
            "value": r["peak"] - r["baseline"],
            "unit": "B",
            "source": "measured",
            "on": on + ", peak_rss - baseline_rss",
        },
        "import_peak_rss": {
            "value": r["import_peak"],
            "unit": "B",
            "source": "measured",
            "on": on + ", VmHWM after the imports",
        },
        "load_and_first_run": {
            "value": round(r["load_and_run_s"] * 1e3, 3),
            "unit": "ms",
            "source": "measured",
            "on": on + ", wall time of load + one run",
        },
    }


def _backend_of(path: Path):
    """The backend whose file `path` is, after checking it exists (and, inside a bundle,
    that it matches the bundle's manifest)."""
    from ground.errors import UsageError
    from pipeline.bundle import is_bundle, verify
    from targets import backends_by_suffix

    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if is_bundle(path.parent):
        verify(path.parent)
    by_suffix = backends_by_suffix()
    if path.suffix not in by_suffix:
        raise UsageError(
            f"{path}: unknown model file type {path.suffix or '(none)'}; "
            f"expected one of {', '.join(by_suffix)}"
        )
    return by_suffix[path.suffix]


def profile_file(
    path: Path,
    threads: int = 1,
    runs: int = 50,
    warmup: int = 5,
    input_shape: list[int] | None = None,
) -> dict:
    """`cli.py profile`: measure a .pte/.tflite/.onnx without the pipeline (random input of
    the file's own shape). A file that is not what its suffix says is a one-line error."""
    from ground.errors import UsageError

    path = Path(path)
    b = _backend_of(path)
    try:
        desc = b.describe(path)
        shape = b.input_shape(path)
    except Exception as e:  # noqa: BLE001  (whatever the runtime raises on a bad file)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(
            f"{path}: not a readable {path.suffix} file ({type(e).__name__}: {first})"
        ) from None
    if input_shape is not None and list(input_shape) != shape:
        raise UsageError(
            f"{path}: --input-shape {'x'.join(map(str, input_shape))} does not match "
            f"the file's input {'x'.join(map(str, shape))}"
        )
    out = {
        "file": str(path),
        "backend": b.name,
        "input_shape": shape,
        "bytes": {
            "value": desc.get("bytes"),
            "unit": "bytes",
            "source": "counted",
            "on": path.name,
        },
    }
    ok, why = b.can_run()
    if not ok:
        out["latency"] = None
        out["why_not_run"] = why
        return out
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    try:
        out["latency"] = measure_latency(b, path, x, threads, warmup, runs)
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"{path}: loads but does not run ({type(e).__name__}: {first})") from None
    return out
