"""verify: the exported file reloaded through its own runtime and run on the test split and on
random inputs, compared with its PyTorch reference; where the file cannot run here (Core ML on
Linux), what can be checked is checked and the reason is recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ground.log import log
from pipeline import confidence
from pipeline.checkpoint import load_model
from pipeline.rundir import StageResult
from pipeline.stages import export
from pipeline.stages._job import Job, per_backend
from pipeline.verify import parity
from targets._base import Tolerance, run_all

NAME = "verify"
# what passing means is part of the key: a verdict under older rules is not reused
RULES = (
    "top-1 agreement on decided images (near-ties within 2 output steps left out while at "
    "least half are decided)"
)


def key(job: Job, exp: StageResult) -> dict:
    return {"inputs": [exp.digest], "data": job.fingerprint, "rules": RULES}


def run(job: Job, b, choice, exp: StageResult, student: StageResult, calib: dict):
    return job.run.stage(
        per_backend(NAME, b, choice),
        key(job, exp),
        lambda d: _verify(job, d, b, exp, choice, student.dir, calib),
    )


def _verify(job: Job, folder: Path, b, exp, choice, student_dir: Path, calib: dict) -> dict:
    ok, why = b.can_run()
    if not ok:  # e.g. Core ML on Linux: check what can be checked, and say so
        return _structural(b, exp, why)
    ref = np.load(exp.dir / "reference.npz")
    runner = b.load(exp.dir / exp.info["file"])
    out_test = run_all(runner, job.data.x_test)
    out_rand = run_all(runner, ref["x_random"])
    np.savez(folder / "outputs.npz", test=out_test, random=out_rand)
    block = parity(
        ref["test"],
        out_test,
        ref["random"],
        out_rand,
        job.data.y_test,
        Tolerance(**exp.info["tolerance"]),
    )
    block["calibration"] = confidence.metrics(out_test, job.data.y_test, job.recipe.calibrate.bins)
    if block["state"] == "failed" and hasattr(b, "first_divergence"):
        block["first_divergence"] = _locate(job, b, exp, choice, student_dir, calib)
    log(
        f"[verify] {b.name}: {block['state']}"
        + (
            f", file accuracy {block['file_accuracy']:.2%}, SQNR "
            f"{block['test_split']['sqnr_db']:.1f} dB vs its reference"
            if "file_accuracy" in block
            else ""
        )
        + (f"; {'; '.join(block['problems'])}" if block["problems"] else "")
    )
    return block


def _structural(b, exp, why: str) -> dict:
    check = b.structural_check(exp.dir / exp.info["file"], exp.info["io"])
    weights = exp.info["preflight"].get("weights_check")
    problems = check["problems"] + (weights.get("problems", []) if weights else [])
    state = "failed" if problems else "structurally-checked-only"
    log(
        f"[verify] {b.name}: {state} (not run: {why})"
        + (f"; {'; '.join(problems)}" if problems else "")
    )
    return {
        "state": state,
        "why_not_run": why,
        "problems": problems,
        "structure": check["describe"],
        "weights_check": weights,
    }


def _locate(job: Job, b, exp, choice, student_dir: Path, calib: dict) -> dict:
    """Re-lower with every layer tapped and name the first one that departs."""
    model, _, _ = load_model(student_dir)
    threshold = exp.info["tolerance"].get("min_sqnr_db") or 60.0  # fp32 layers agree to ~130 dB
    log(f"[verify] {b.name}: locating the first divergent layer (taps, SQNR < {threshold} dB)")
    req = export.request(job, model, choice, calib, Path("."))
    found = b.first_divergence(req, job.data.x_test[:1], threshold)
    if found["first"]:
        f = found["first"]
        found["problem"] = (
            f"first divergent layer: {f['module'] or f['node']} "
            f"({f['op']}, SQNR {f['sqnr_db']:.1f} dB vs PyTorch)"
        )
    else:
        found["problem"] = (
            f"no tapped layer departs by more than {threshold} dB on a single "
            "re-lowering: the divergence is outside the tapped ops or not "
            "reproducible"
        )
    return found
