"""distill: Hinton KD (plus optional feature hints) from the teacher into the student."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ground.errors import UsageError
from ground.log import log
from models import create_from_spec, load_state
from models._user import load_weights
from pipeline.checkpoint import check_finite, load_model, save_model
from pipeline.distill import FeatureHints, feature_pairs, kd_feature_loss_fn, kd_loss_fn
from pipeline.prune import apply_masks, masks_of_zeros, prune_unstructured, remove_masks
from pipeline.rundir import StageResult, sha256_file
from pipeline.stages._job import Job, sparsity_figures
from pipeline.train import accuracy, fit, predict

NAME = "distill"


def key(job: Job, teacher: StageResult, pruned: StageResult) -> dict:
    ext = job.recipe.distill.teacher_weights
    return {
        "config": {
            **asdict(job.recipe.distill),
            "seed": job.seed,
            "teacher_sha256": sha256_file(Path(ext)) if ext and Path(ext).is_file() else None,
            "train": asdict(job.recipe.train),
        },
        "inputs": [teacher.digest, pruned.digest],
        "data": job.fingerprint,
        **job.augment_key(),
    }


def run(job: Job, teacher: StageResult, pruned: StageResult) -> StageResult:
    return job.run.stage(
        NAME,
        key(job, teacher, pruned),
        lambda d: _distill(job, d, teacher.dir, pruned.dir),
        all_ranks=True,
    )


def _distill(job: Job, folder: Path, teacher_dir: Path, pruned_dir: Path) -> dict:
    cfg = job.recipe.distill
    teacher, who = _teacher(job, teacher_dir)
    student, spec, plan = load_model(pruned_dir)
    what = (
        "the pruned student"
        if cfg.student_model is None
        else f"the {cfg.student_model} student (from scratch)"
    )
    log(
        f"[distill] {what} from {who}: T={cfg.temperature}, alpha={cfg.alpha}, {cfg.epochs} epochs"
        + (f", feature hints x{cfg.feature_weight:g}" if cfg.feature_weight else "")
    )
    loss, hints = _loss(job, student, teacher)
    # unstructured zeros stay zero while fine-tuning (the masks are held as hooks)
    masks = masks_of_zeros(student) if plan and plan.get("unstructured") else {}
    apply_masks(student, masks, hold=True)
    _fit(job, student, loss, hints)
    remove_masks(student)
    check_finite(student, "distill")
    save_model(folder, student, spec, plan)
    info = job.figures(student, "distilled student")
    info["teacher"] = who
    if hints is not None:
        info["feature_hints"] = [f"{s} <- {t}" for s, t in hints.pairs]
    if masks:
        info["unstructured"] = sparsity_figures(
            prune_unstructured(student, 0.0)[1], "distilled student (masks held)"
        )
    log(f"[distill] student accuracy {info['accuracy']['value']:.2%}")
    return info


def _loss(job: Job, student, teacher):
    """(KD loss, feature hints or None); the hints' adapters are added to the student."""
    cfg = job.recipe.distill
    if not cfg.feature_weight:
        return kd_loss_fn(teacher, cfg.temperature, cfg.alpha), None
    pairs = feature_pairs(student, teacher, cfg.feature_layers)
    hints = FeatureHints(student, teacher, pairs, job.example)
    student.add_module("_feature_hints", hints)  # its adapters train with the student
    return kd_feature_loss_fn(teacher, hints, cfg.temperature, cfg.alpha, cfg.feature_weight), hints


def _fit(job: Job, student, loss, hints: FeatureHints | None) -> None:
    cfg = job.recipe.distill
    try:
        fit(
            student,
            job.data.x_train,
            job.data.y_train,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            seed=job.seed,
            desc="distill student",
            loss_fn=loss,
            augment=job.augment,
        )
    finally:
        if hints is not None:
            hints.close()
            del student._feature_hints


def _teacher(job: Job, teacher_dir: Path):
    """The dense model of the train stage, or the recipe's zoo teacher with its weights."""
    cfg = job.recipe.distill
    if cfg.teacher_model is None:
        return load_model(teacher_dir)[0], "the dense teacher"
    state, how = load_weights(Path(cfg.teacher_weights), False)
    teacher = create_from_spec({**job.spec, "name": cfg.teacher_model})
    try:
        load_state(teacher, state)
    except RuntimeError as e:
        raise UsageError(
            f"recipe key distill.teacher_weights {cfg.teacher_weights}: does not "
            f"fit distill.teacher_model {cfg.teacher_model}: "
            f"{str(e).splitlines()[0]}"
        ) from None
    check_finite(teacher, f"distill.teacher_weights {cfg.teacher_weights}")
    acc = accuracy(predict(teacher, job.data.x_test), job.data.y_test)
    log(
        f"[distill] teacher {cfg.teacher_model} from {cfg.teacher_weights} ({how}): "
        f"test accuracy {acc:.2%}"
    )
    return teacher.eval(), f"{cfg.teacher_model} ({cfg.teacher_weights})"
