"""profile: latency and memory measured on this host where the file runs, and per-layer
estimates for the target's device profiles."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ground.log import log
from pipeline import estimate, profile
from pipeline.checkpoint import load_model
from pipeline.rundir import StageResult
from pipeline.stages._job import Job, per_backend

NAME = "profile"


def key(job: Job, exp: StageResult, student: StageResult, devices) -> dict:
    return {
        "config": asdict(job.recipe.profile),
        "inputs": [exp.digest, student.digest],
        "devices": list(devices),
    }


def run(job: Job, b, choice, exp: StageResult, student: StageResult, devices):
    return job.run.stage(
        per_backend(NAME, b, choice),
        key(job, exp, student, devices),
        lambda d: _profile(job, b, exp, student.dir, devices),
    )


def _profile(job: Job, b, exp, student_dir: Path, devices) -> dict:
    """Measured on this host where the file runs; estimated for the target's devices."""
    out = {"latency": None, "estimates": _estimates(job, exp, student_dir, devices)}
    ok, why = b.can_run()
    if not ok:
        out["why"] = why
        return out
    cfg, path = job.recipe.profile, exp.dir / exp.info["file"]
    x = job.data.x_test[:1]
    out["latency"] = [
        profile.measure_latency(b, path, x, t, cfg.warmup, cfg.runs) for t in cfg.threads
    ]
    log(
        f"[profile] {b.name}: p50 {out['latency'][0]['p50']['value']:.3f} ms "
        f"({out['latency'][0]['threads']} thread)"
    )
    out["memory"] = _guarded(lambda: profile.peak_rss(b.name, path, x.shape, threads=1))
    if b.name == "executorch-xnnpack":
        out["memory"].update(_guarded(lambda: estimate.planned_memory(path)))
        out["op_breakdown"] = _guarded(lambda: profile.op_breakdown(path, x, threads=1))
    return out


def _estimates(job: Job, exp, student_dir: Path, devices) -> dict:
    if not devices:
        return {}
    model, _, _ = load_model(student_dir)
    precision = "int8" if exp.info["precision"] == "int8" else "fp32"
    return _guarded(
        lambda: estimate.estimate_for_devices(
            model, job.example, precision, list(devices), threads=1
        )
    )


def _guarded(fn) -> dict:
    """A profiling extra that fails is reported with its error, not raised: the file itself
    was already verified, and the report says what could not be measured."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        log(f"[profile] not measured: {msg}")
        return {"error": msg}
