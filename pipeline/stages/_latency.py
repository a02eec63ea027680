"""A latency target for the prune stage: which of the target's backends measures it (the first
whose runtime times each operator on this host), at the precision the target exports it in; or,
for milliseconds on a device profile (prune.latency_target), the device model that estimates it
at the target's first precision."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ground.errors import UsageError
from ground.log import log
from pipeline.estimate.device_fit import DEVICE_FIT_PATH
from pipeline.prune.device_latency import DeviceLatency, parse_device_target
from pipeline.prune.latency import LatencyCost
from pipeline.stages import export
from pipeline.stages._job import Job
from targets import get_backend, list_backends

# how the planner weighs groups and blocks, per prune.latency_weighing (a change re-plans)
WEIGHING = {
    "macs": "share of the model's MACs per group step, per residual block removed",
    "divergence": "output KL per group narrowed alone, per residual block removed alone",
}
THREADS = 1  # what the profile stage reports as p50; phones' apps mostly run one inference thread


def _measuring(choices):
    for c in choices:
        if hasattr(get_backend(c.backend), "operator_times"):
            return c
    names = ", ".join(c.backend for c in choices) or "none"
    able = ", ".join(b for b in list_backends() if hasattr(get_backend(b), "operator_times"))
    raise UsageError(
        f"prune.target latency: none of the target's backends ({names}) times its operators on "
        f"this host; pick a target with one that does ({able}) or prune.target macs"
    )


def key(job: Job, choices) -> dict:
    spec, calib = job.recipe.prune.latency_target, export.calibration_images(job)["sha256"]
    p = job.recipe.prune
    plan = {
        "calibration": calib,
        "weighing": WEIGHING[p.latency_weighing],
        "blocks": p.remove_blocks,
    }
    if spec is not None:
        fit = hashlib.sha256(Path(DEVICE_FIT_PATH).read_bytes()).hexdigest()
        on = {"device": spec, "precision": _device_precision(choices), "threads": THREADS}
        return {"latency_on": on, "device_fit": fit, **plan}
    c = _measuring(choices)
    on = {"backend": c.backend, "precision": c.precision, "threads": THREADS}
    return {"latency_on": on, **plan}


def cost(job: Job, choices) -> LatencyCost | DeviceLatency:
    calib = export.calibration_images(job)["x"]
    spec = job.recipe.prune.latency_target
    if spec is not None:
        device = parse_device_target(spec)[1]
        cost = DeviceLatency(device, _device_precision(choices), calib, THREADS)
    else:
        c = _measuring(choices)
        cost = LatencyCost(get_backend(c.backend), c.precision, calib, THREADS)
    cost.depth, cost.weighing = job.recipe.prune.remove_blocks, job.recipe.prune.latency_weighing
    return cost


def _device_precision(choices) -> str:
    """The device model knows int8 and fp32 kernels; as the profile stage's estimates do, any
    other scheme (fp16, palettized) counts as fp32."""
    return "int8" if choices and choices[0].precision == "int8" else "fp32"


def fraction(job: Job, target, teacher, example) -> float:
    """The kept fraction of the dense latency: prune.fraction, or the device milliseconds over
    the dense model's estimate (1 when it is already within them)."""
    spec = job.recipe.prune.latency_target
    if spec is None:
        return job.recipe.prune.kept_fraction
    ms, dense = parse_device_target(spec)[0], target.measure(teacher, example)
    if ms >= dense:
        log(f"[prune] the dense model is estimated at {dense:.3g} ms, within {spec}")
    return min(1.0, ms / dense)


def log_result(lat: dict) -> None:
    log(
        f"[prune] latency ({lat['measured_on']}): dense {lat['dense_ms']:.3f} ms, target "
        f"{lat['target_ms']:.3f} ms, table predicted {lat['predicted_ms'] or 0:.3f} ms, "
        f"{lat['how']} {lat['achieved_ms']:.3f} ms ({lat['achieved_ms'] / lat['target_ms'] - 1:+.0%} "
        "of the target)"
    )
