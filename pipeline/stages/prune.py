"""prune: structured channel pruning of the teacher (one shot, or iterative with KD fine-tuning
between the steps), then optionally lottery-ticket rewinding and unstructured sparsity; or,
with distill.student_model, a fresh student of another architecture instead."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch

from ground.errors import UsageError
from ground.log import log
from models import create_from_spec
from pipeline.checkpoint import check_finite, load_model, load_weights_file, save_model
from pipeline.distill import kd_loss_fn
from pipeline.prune import (
    apply_masks,
    count,
    layer_widths,
    prune_iteratively,
    prune_unstructured,
    prune_with_config,
    rewind,
)
from pipeline.regularize import SparsityTraining
from pipeline.rundir import StageResult
from pipeline.stages import _latency as latency
from pipeline.stages import train
from pipeline.stages._job import Job, sparsity_figures
from pipeline.train import fit

NAME = "prune"


def key(job: Job, teacher: StageResult, round_to: int, choices=()) -> dict:
    r = job.recipe
    finetune = (
        {**asdict(r.distill), "train": asdict(r.train)} if r.prune.iterative_steps > 1 else None
    )
    measured = latency.key(job, choices) if r.prune.target == "latency" else {}
    config = asdict(r.prune)
    # in the latency part of the key, where they apply
    config.pop("latency_target")
    config.pop("remove_blocks")
    config.pop("latency_weighing")
    return {
        "config": {
            **config,
            "round_to": round_to,
            "student_model": r.distill.student_model,
            "finetune": finetune,
        },
        "inputs": [teacher.digest],
        "data": job.fingerprint,
        **(job.augment_key() if finetune else {}),
        **measured,
    }


def run(job: Job, teacher: StageResult, round_to: int, choices=()) -> StageResult:
    """Decided once, on rank 0 (its fine-tuning between iterative steps too); the other ranks
    receive the plan and weights with the stage's files. `choices`: the target's backends, one
    of which measures a latency target."""
    return job.run.stage(
        NAME,
        key(job, teacher, round_to, choices),
        lambda d: _prune(job, d, teacher.dir, round_to, choices),
    )


def _prune(job: Job, folder: Path, teacher_dir: Path, round_to: int, choices) -> dict:
    cfg = job.recipe.prune
    teacher, spec, _ = load_model(teacher_dir)
    if job.recipe.distill.student_model:
        return _fresh_student(job, folder, teacher)
    if cfg.target == "latency":
        target = latency.cost(job, choices)
        cfg = replace(
            cfg, target=target, fraction=latency.fraction(job, target, teacher, job.example)
        )
    res = _structured(job, cfg, teacher, round_to)
    model, plan, extra = res.model, res.plan, {}
    if cfg.sparsity > 0:  # the mask is chosen on the trained weights, before any rewind
        model, masks = _unstructured(model, plan, extra, cfg.sparsity)
    if cfg.rewind_epoch is not None:
        model = _rewind(model, plan, spec, teacher_dir, cfg.rewind_epoch)
        if cfg.sparsity > 0:
            apply_masks(model, masks)
        plan["rewound_to"] = _rewind_name(cfg.rewind_epoch)
        extra["rewound_to"] = plan["rewound_to"]
    check_finite(model, "prune")
    save_model(folder, model, spec, plan)
    info = job.figures(model, "pruned, before fine-tuning")
    info.update(
        extra,
        ratio=res.ratio,
        widths={"before": layer_widths(teacher), "after": layer_widths(model)},
        groups={
            "verified": plan["verified"],
            "unverified": plan["unverified_why"],
            "frozen": plan["frozen"],
            "floored": plan["floored"],
            "removed_blocks": [
                b for s in plan.get("steps", [plan]) for b in s.get("removed_blocks", [])
            ],
        },
    )
    if "latency" in plan:
        info["latency"] = plan["latency"]
        latency.log_result(plan["latency"])
    _log_result(res, extra, info)
    return info


def _structured(job: Job, cfg, teacher, round_to: int):
    steps = cfg.iterative_steps
    data = (job.data.x_train, job.data.y_train)
    log(
        f"[prune] {cfg.importance} importance, keep {cfg.kept_fraction:.0%} of the {cfg.target}, "
        f"channels rounded to multiples of {round_to}"
        + (
            f", {steps} steps on a cubic schedule, {cfg.finetune_epochs} KD epochs between"
            if steps > 1
            else ", one shot"
        )
    )
    if steps == 1:
        return prune_with_config(teacher, job.example, cfg, data, round_to)
    finetune = _finetune_between_steps(job, teacher, steps)
    return prune_iteratively(teacher, job.example, cfg, data, finetune, steps, round_to)


def _unstructured(model, plan: dict, extra: dict, fraction: float):
    """Magnitude sparsity on top of the structured cut: (masked model, masks)."""
    masked, sparsity = prune_unstructured(model, fraction)
    masks = {n: (m.weight != 0) for n, m in masked.named_modules() if n in sparsity["per_layer"]}
    plan["unstructured"] = {k: sparsity[k] for k in ("asked", "sparsity", "method")}
    extra["unstructured"] = sparsity_figures(sparsity, "pruned model")
    return masked, masks


def _log_result(res, extra: dict, info: dict) -> None:
    log(
        f"[prune] MACs {res.macs_before:,} -> {res.macs_after:,} "
        f"({res.macs_after / res.macs_before:.0%})"
        + (
            f", {extra['unstructured']['sparsity']['value']:.0%} of the conv/linear weights zeroed"
            if "unstructured" in extra
            else ""
        )
        + (f", rewound to {extra['rewound_to']}" if "rewound_to" in extra else "")
        + f", accuracy before fine-tuning {info['accuracy']['value']:.2%}"
    )


def _fresh_student(job: Job, folder: Path, teacher) -> dict:
    """distill.student_model: another architecture, initialised (seeded), not pruned."""
    name = job.recipe.distill.student_model
    torch.manual_seed(job.seed)
    student = create_from_spec({**job.spec, "name": name}).train()
    save_model(folder, student, {**job.spec, "name": name})
    info = job.figures(student, f"{name} student, initialised, before distillation")
    info["widths"] = {"before": layer_widths(teacher), "after": layer_widths(student)}
    info["student_model"] = name
    log(
        f"[prune] not pruning: the student is {name} (distill.student_model), "
        f"MACs {info['macs']['value']:,} vs the teacher's {count(teacher, job.example)[0]:,}"
    )
    return info


def _finetune_between_steps(job: Job, teacher, steps: int):
    """KD fine-tuning after every iterative step but the last (the distill stage follows)."""
    cfg, d = job.recipe, job.data

    def finetune(model, step):
        if step == steps or cfg.prune.finetune_epochs == 0:
            return
        sparse = SparsityTraining(model, job.example, cfg.train, job.seed + step)
        try:  # the sparsity-training options act during pruning too
            fit(
                model,
                d.x_train,
                d.y_train,
                epochs=cfg.prune.finetune_epochs,
                batch_size=cfg.distill.batch_size,
                lr=cfg.distill.lr,
                seed=job.seed + step,
                desc=f"fine-tune step {step}/{steps}",
                loss_fn=sparse.wrap(
                    kd_loss_fn(teacher, cfg.distill.temperature, cfg.distill.alpha)
                ),
                augment=job.augment,
            )
        finally:
            sparse.close()

    return finetune


def _rewind_name(epoch: int) -> str:
    return "initialisation" if epoch == 0 else f"the end of training epoch {epoch}"


def _rewind(model, plan, spec, teacher_dir: Path, epoch: int):
    path = teacher_dir / train.REWIND_FILES[0 if epoch == 0 else 1]
    if not path.is_file():
        raise UsageError(
            "recipe key prune.rewind_epoch: the train stage kept no weights to "
            "rewind to (--weights skips training); train here or drop the key"
        )
    log(f"[prune] lottery ticket: surviving weights reset to their values at {_rewind_name(epoch)}")
    return rewind(model, plan, load_weights_file(path), spec)
