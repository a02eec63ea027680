"""profile: latency and memory measured on this host where the file runs, and per-layer
estimates for the target's device profiles."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ground.log import guarded, log
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
    out["memory"] = guarded(lambda: profile.peak_rss(b.name, path, x.shape, threads=1))
    extras = b.profile_extras(path, x)  # e.g. ExecuTorch's memory plan and per-op times
    out["memory"].update(extras.pop("memory", {}))
    return out | extras


def _estimates(job: Job, exp, student_dir: Path, devices) -> dict:
    if not devices:
        return {}
    model, _, _ = load_model(student_dir)
    precision = "int8" if exp.info["precision"] == "int8" else "fp32"
    # threads: 1, and the count the app's runtime picks on each device (its faster clusters)
    return guarded(
        lambda: estimate.estimate_for_devices(model, job.example, precision, list(devices))
    )
