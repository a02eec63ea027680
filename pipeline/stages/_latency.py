"""A latency target for the prune stage: which of the target's backends measures it (the first
whose runtime times each operator on this host), at the precision the target exports it in."""

from __future__ import annotations

from ground.errors import UsageError
from ground.log import log
from pipeline.prune.latency import LatencyCost
from pipeline.stages import export
from pipeline.stages._job import Job
from targets import get_backend, list_backends

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
    c = _measuring(choices)
    calib = export.calibration_images(job)
    return {
        "latency_on": {"backend": c.backend, "precision": c.precision, "threads": THREADS},
        "calibration": calib["sha256"],
    }


def cost(job: Job, choices) -> LatencyCost:
    c = _measuring(choices)
    calib = export.calibration_images(job)["x"]
    return LatencyCost(get_backend(c.backend), c.precision, calib, THREADS)


def log_result(lat: dict) -> None:
    log(
        f"[prune] latency ({lat['measured_on']}): dense {lat['dense_ms']:.3f} ms, target "
        f"{lat['target_ms']:.3f} ms, table predicted {lat['predicted_ms'] or 0:.3f} ms, "
        f"measured {lat['achieved_ms']:.3f} ms ({lat['achieved_ms'] / lat['target_ms'] - 1:+.0%} "
        "of the target)"
    )
