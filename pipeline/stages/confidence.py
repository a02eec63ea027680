"""calibrate: confidence calibration. Temperature scaling (Guo et al. 2017): T fitted on the
validation split and folded into the classifier (W/T, b/T), so every exported file emits the
calibrated logits."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ground.log import log
from pipeline import confidence
from pipeline.checkpoint import load_model, save_model
from pipeline.report import measured
from pipeline.rundir import StageResult
from pipeline.stages._job import Job
from pipeline.train import predict

NAME = "calibrate"


def key(job: Job, student: StageResult) -> dict:
    return {
        "config": asdict(job.recipe.calibrate),
        "inputs": [student.digest],
        "data": job.fingerprint,
    }


def run(job: Job, student: StageResult) -> StageResult:
    return job.run.stage(NAME, key(job, student), lambda d: _calibrate(job, d, student.dir))


def _calibrate(job: Job, folder: Path, student_dir: Path) -> dict:
    cfg, d = job.recipe.calibrate, job.data
    student, spec, plan = load_model(student_dir)
    ev = confidence.evaluate(
        predict(student, d.x_val), d.y_val, predict(student, d.x_test), d.y_test, cfg.bins
    )
    fit = ev["fit"]
    applied = 1.0
    if cfg.temperature_scaling:
        applied = fit["temperature"] if cfg.apply == "always" else fit["recommended_temperature"]
    folded, unfoldable = _fold(student, applied, job.example)
    save_model(folder, folded, spec, plan)
    why = _decision(job, fit, applied)
    app_t = None
    if unfoldable is not None:  # the files emit unscaled logits; the app scales them
        why, app_t, applied = unfoldable, applied, 1.0
    ch = ev["nll_change"]
    se = f" ± {ch['standard_error']:.4f} (1 s.e.)" if ch["standard_error"] is not None else ""
    log(
        f"[calibrate] temperature fitted {fit['temperature']:.3f}, applied {applied:.3f} ({why}); "
        f"test NLL {ev['before']['nll']:.4f} -> {ev['after']['nll']:.4f} with the fitted T "
        f"(change {ch['mean']:+.4f}{se})"
    )
    info = _info(job, ev, applied, why)
    info["app_divides_logits_by"] = app_t
    return info


def _fold(student, T: float, example):
    """(model with T folded, None), or (model unchanged, why) when the model's output layer
    cannot carry T; the app then divides the logits by T itself, as model.json says."""
    try:
        return confidence.fold_temperature(student, T, example), None
    except confidence.CannotFold as e:
        why = (
            f"not folded, {e}; the app divides the logits by T = {T:.4f} before softmax "
            "(model.json temperature.app_divides_logits_by)"
        )
        log(f"[calibrate] warning: {why}")
        return student, why


def _decision(job: Job, fit: dict, applied: float) -> str:
    """Why T was (not) folded, in words for the log and the report."""
    cfg, n_val = job.recipe.calibrate, len(job.data.y_val)
    if not cfg.temperature_scaling:
        return "switched off (calibrate.temperature_scaling: false)"
    if applied == 1.0:
        return "fitted but not folded: " + fit.get(
            "note", "cross-validation on the validation split says scaling does not lower NLL"
        )
    cv = fit.get("cv")
    if not (cv and not cv["scaling_helps"]):
        return "folded"
    return (
        f"folded (calibrate.apply: always; note: 5-fold cross-validation inside the "
        f"{n_val} validation images found scaling raised NLL, "
        f"{cv['nll_unscaled']:.4f} -> {cv['nll_scaled']:.4f}; `calibrate.apply: "
        "fitted` folds T only when it does not)"
    )


def _info(job: Job, ev: dict, applied: float, why: str) -> dict:
    d, fit, ch = job.data, ev["fit"], ev["nll_change"]
    on = (
        f"distilled student, {len(d.y_test)} test images, "
        f"T fitted on {len(d.y_val)} validation images"
    )
    return {
        "temperature_fitted": fit["temperature"],
        "temperature_applied": applied,
        "folded": applied != 1.0,
        "decision": why,
        "cross_validation": fit.get("cv"),
        "before": confidence.figures(ev["before"], on + ", unscaled"),
        "after_fitted": confidence.figures(ev["after"], on + ", scaled by the fitted T"),
        # is the change more than the test split's noise? the per-image spread says
        "nll_change": {
            **measured(
                ch["mean"],
                "nats",
                on + "; test NLL with the fitted T minus without, mean over the test images",
            ),
            "standard_error": ch["standard_error"],
        },
        "temperature": measured(
            applied,
            "T",
            on.replace("distilled student, ", "") + "; the T folded into the classifier",
        ),
        "reliability_data": {
            "before": ev["before"],
            "after": ev["after"],
            "temperature": fit["temperature"],
        },
    }
