"""Machinery shared by the benchmark scripts: logging, the host description, interleaved
latency measurement, teachers cached between scripts, and RESULTS.md sections."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import random
import re
import sys
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
CIFAR = ROOT.parent / "shared" / "data" / "cifar10"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def environment() -> dict:
    """Hardware, versions and the load average (a shared machine says so)."""
    cpu = "unknown"
    try:
        m = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass

    def v(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "?"

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "executorch": v("executorch"),
        "torch-pruning": v("torch-pruning"),
        "litert-torch": v("litert-torch"),
        "ai-edge-litert": v("ai-edge-litert"),
        "onnxruntime": v("onnxruntime"),
        "os": platform.platform(),
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def describe_env(start: dict, end: dict) -> str:
    la = lambda e: "/".join(f"{x:.1f}" for x in e["load_avg"]) if e.get("load_avg") else "?"
    return (
        f"{start['cpu']}, {start['cores']} cores; Python {start['python']}, torch "
        f"{start['torch']}, executorch {start['executorch']}, torch-pruning "
        f"{start['torch-pruning']}, litert-torch {start['litert-torch']}, ai-edge-litert "
        f"{start['ai-edge-litert']}, onnxruntime {start['onnxruntime']}; {start['os']}; "
        f"load average (1/5/15 min) {la(start)} at the start, {la(end)} at the end"
    )


def interleaved(runners: dict, x: np.ndarray, rounds: int, warmup: int, seed: int = 0) -> dict:
    """Each round runs every runner once, in a shuffled order, so that load from other
    processes hits all alike; median and quartiles over the rounds, in ms."""
    for run in runners.values():
        for _ in range(warmup):
            run(x)
    times = {k: [] for k in runners}
    order, rng = list(runners), random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            runners[k](x)
            times[k].append(time.perf_counter() - t0)
    out = {}
    for k, ts in times.items():
        a = np.array(ts) * 1e3
        out[k] = {
            "median_ms": float(np.median(a)),
            "q1_ms": float(np.percentile(a, 25)),
            "q3_ms": float(np.percentile(a, 75)),
            "runs": len(a),
        }
    return out


def interleaved_loads(paths: dict, x: np.ndarray, loads: int, rounds: int, warmup: int) -> dict:
    """interleaved() over `loads` fresh ExecuTorch loads of each program (1 thread); per
    program the median of its loads' medians (one load can time a few % from another)."""
    import targets

    b = targets.get_backend("executorch-xnnpack")
    runners = {(k, i): b.load(p, threads=1) for k, p in paths.items() for i in range(loads)}
    t = interleaved(runners, x, rounds=rounds, warmup=warmup)
    med = lambda k: float(np.median([t[(k, i)]["median_ms"] for i in range(loads)]))
    return {k: {"median_ms": med(k), "runs": rounds, "loads": loads} for k in paths}


def export(backend: str, model, example, precision: str, calibration, folder: Path, **kw):
    """Export through the project's backend (the pipeline's own path) and load it, 1 thread."""
    import targets
    from targets._base import ExportRequest

    b = targets.get_backend(backend)
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp = b.export(ExportRequest(model.eval(), example, precision, calibration, folder, **kw))
    return exp, b.load(exp.path, threads=1)


def file_accuracy(runner, x: np.ndarray, y: np.ndarray) -> float:
    from targets._base import run_all

    return float((run_all(runner, x).argmax(1) == y).mean())


def teacher(name: str, data, epochs: int, seed: int, cache: Path, augment=None, **fit_kw):
    """A dense model trained on `data`, cached on disk (safetensors) by its settings, so that
    the scripts that share a teacher train it once. `augment`: an AugmentConfig for the training
    batches (None: none). Returns (model, initial state, seconds)."""
    from safetensors.torch import load_file, save_file

    from models import create_model, load_state
    from pipeline.augment import for_training
    from pipeline.train import fit

    c, h, _ = data.input_shape
    key = f"{name}-{data.name}-{len(data.y_train)}-{data.fingerprint()[:8]}-e{epochs}-s{seed}"
    for k, v in sorted(fit_kw.items()):
        key += f"-{k}{v}"
    if augment is not None and augment.enabled:
        key += f"-flip{int(augment.flip)}-pad{augment.pad_crop}-rrc{augment.resized_crop:g}"
        fit_kw["augment"] = for_training(augment, data.preprocessing)
    path, init_path, meta = (
        cache / f"{key}.safetensors",
        cache / f"{key}.init.safetensors",
        cache / f"{key}.json",
    )
    torch.manual_seed(seed)
    model = create_model(name, c, data.num_classes, h)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    if path.is_file() and meta.is_file():
        load_state(model, load_file(str(path)))
        log(f"teacher {key}: cached")
        return model.eval(), load_file(str(init_path)), json.loads(meta.read_text())["seconds"]
    cache.mkdir(parents=True, exist_ok=True)
    log(f"teacher {key}: training {epochs} epochs on {len(data.y_train)} images")
    t0 = time.perf_counter()
    fit(
        model,
        data.x_train,
        data.y_train,
        epochs=epochs,
        seed=seed,
        desc=f"teacher {name}",
        **{"batch_size": 64, "lr": 0.003, "weight_decay": 5e-4, **fit_kw},
    )
    seconds = time.perf_counter() - t0
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    save_file({k: v.contiguous() for k, v in init.items()}, str(init_path))
    meta.write_text(json.dumps({"seconds": seconds}))
    return model.eval(), init, seconds


def cached_row(path: Path, make) -> dict:
    """The row stored at `path`, else make() written there (a re-run resumes)."""
    if path.is_file():
        log(f"{path.name}: from {path}")
        return json.loads(path.read_text())
    row = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1) + "\n")
    return row


def publish(heading: str, text: str, out: Path | None, quick: bool) -> None:
    """A benchmark's section: to --out when given, else into RESULTS.md, but never a --quick
    smoke run's (the committed tables come from full runs); printed either way."""
    if out:
        out.write_text(text + "\n")
    elif not quick:
        write_section(heading, text)
    print(text)


def write_section(heading: str, text: str, path: Path = RESULTS) -> None:
    """Replace the section under `heading` in RESULTS.md (others are left as they are)."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    new = (
        pattern.sub(lambda _: text.rstrip() + "\n\n", old, count=1)
        if pattern.search(old)
        else old.rstrip() + "\n\n" + text.rstrip() + "\n"
    )
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(new.rstrip() + "\n")
    tmp.replace(path)
