"""export: quantize (int8 calibrated on training images, or QAT) and write one backend's file,
with the PyTorch reference outputs its parity is judged against."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ground import faults
from ground.log import log
from pipeline.checkpoint import load_model
from pipeline.distill import kd_loss_fn
from pipeline.rundir import StageResult
from pipeline.stages._job import Job, per_backend
from pipeline.train import fit
from targets._base import ExportRequest

NAME = "export"
RANDOM_INPUTS = 32


def calibration_images(job: Job) -> dict:
    """int8 calibration images: a seeded draw from the training split, never the test split."""
    n, x_train = job.recipe.quantize.calibration_images, job.data.x_train
    rng = np.random.default_rng(job.seed)
    idx = np.sort(rng.choice(len(x_train), size=min(n, len(x_train)), replace=False))
    x = x_train[idx]
    return {
        "x": x,
        "count": len(idx),
        "split": "train",
        "sha256": hashlib.sha256(x.tobytes()).hexdigest(),
    }


def key(choice, student: StageResult, calib: dict, qat: dict | None) -> dict:
    return {
        "config": {
            "precision": choice.precision,
            "options": list(choice.options),
            "qat": qat and qat["config"],
        },
        "inputs": [student.digest],
        "calibration": calib["sha256"],
    }


def run(job: Job, b, choice, student: StageResult, calib: dict, teacher: StageResult):
    qat = _qat(job, b, choice, teacher)
    return job.run.stage(
        per_backend(NAME, b, choice),
        key(choice, student, calib, qat),
        lambda d: _export(job, d, b, choice, student.dir, calib, qat),
    )


def request(job: Job, model, choice, calib: dict, folder: Path, train=None) -> ExportRequest:
    return ExportRequest(
        model,
        job.example,
        choice.precision,
        calib["x"] if choice.precision != "fp32" else None,
        folder,
        dict(choice.options),
        train=train,
    )


def _qat(job: Job, b, choice, teacher: StageResult) -> dict | None:
    """Quantization-aware training (where the backend offers it): KD from the dense teacher."""
    q, d = job.recipe.quantize, job.recipe.distill
    if not q.qat_epochs or choice.precision not in b.qat_precisions:
        return None

    def train(prepared):
        dense, _, _ = load_model(teacher.dir)
        log(
            f"[export] {b.name}: quantization-aware training, {q.qat_epochs} epochs, KD from "
            "the dense teacher"
        )
        fit(
            prepared,
            job.data.x_train,
            job.data.y_train,
            epochs=q.qat_epochs,
            batch_size=d.batch_size,
            lr=q.qat_lr,
            seed=job.seed,
            desc="QAT",
            loss_fn=kd_loss_fn(dense, d.temperature, d.alpha),
            augment=job.augment,
        )

    config = {"epochs": q.qat_epochs, "lr": q.qat_lr, "kd": asdict(d), "teacher": teacher.digest}
    config |= job.augment_key()
    return {"config": config, "train": train}


def _export(job: Job, folder: Path, b, choice, student_dir: Path, calib: dict, qat) -> dict:
    model, _, _ = load_model(student_dir)
    log(
        f"[export] {b.name} {choice.precision}: converting"
        + (
            f" (int8 calibration on {calib['count']} training images)"
            if choice.precision == "int8" and not qat
            else ""
        )
        + (f" after {qat['config']['epochs']} epochs of QAT" if qat else "")
    )
    start = time.perf_counter()
    exp = b.export(request(job, model, choice, calib, folder, train=qat and qat["train"]))
    log(f"[export] {b.name}: wrote {exp.path.name} in {time.perf_counter() - start:.1f} s")
    faults.point(f"export:{b.name}")
    _save_reference(job, folder, exp)
    return {
        "file": exp.path.name,
        "precision": exp.precision,
        "io": exp.io,
        "tolerance": exp.tolerance.describe(),
        "preflight": exp.preflight,
        "notes": exp.notes,
        "seconds": round(time.perf_counter() - start, 2),
        "calibration": {k: calib[k] for k in ("count", "split", "sha256")}
        if choice.precision != "fp32" and not qat
        else None,
        "qat": {
            "epochs": qat["config"]["epochs"],
            "lr": qat["config"]["lr"],
            "data": f"training split ({len(job.data.y_train)} images), KD from the dense teacher",
        }
        if qat
        else None,
    }


def _save_reference(job: Job, folder: Path, exp) -> None:
    """reference.npz: what the file must compute on the test split and on random inputs."""
    rng = np.random.default_rng(1234)
    x_rand = rng.standard_normal((RANDOM_INPUTS, *job.spec["input_shape"])).astype(np.float32)
    with torch.no_grad():
        # one image at a time: quantized references are exported graphs fixed to batch 1
        ref = {
            name: torch.cat(
                [exp.reference(torch.from_numpy(x[i : i + 1])) for i in range(len(x))]
            ).numpy()
            for name, x in (("test", job.data.x_test), ("random", x_rand))
        }
    np.savez(folder / "reference.npz", test=ref["test"], random=ref["random"], x_random=x_rand)
