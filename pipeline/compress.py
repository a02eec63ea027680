"""`compress`: train -> prune -> distill -> quantize + export -> verify -> profile -> bundle.

Each stage runs through RunDir.stage, so a stage whose inputs and config are unchanged is
reused, and the bundle is published last, as a whole.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ground import faults
from ground.errors import SlimshipError, UsageError
from ground.log import log
from models import create_model, example_input, get_model_entry
from models._user import is_user_model, load_weights, user_factory
from pipeline import bundle, calibration, distributed
from pipeline.checkpoint import (
    check_finite,
    load_model,
    load_weights_file,
    save_model,
    save_weights,
)
from pipeline.config import Recipe, load_recipe
from pipeline.data import Dataset, load_dataset
from pipeline.distill import FeatureHints, feature_pairs, kd_feature_loss_fn, kd_loss_fn
from pipeline.gate import evaluate
from pipeline.profile import host, measure_latency
from pipeline.prune import (
    apply_masks,
    count,
    layer_widths,
    masks_of_zeros,
    prune_iteratively,
    prune_unstructured,
    prune_with_config,
    remove_masks,
    rewind,
)
from pipeline.regularize import SparsityTraining
from pipeline.report import counted, measured, parity_figures, summary_table
from pipeline.rundir import RunDir, library_versions, sha256_file, write_bytes, write_json
from pipeline.train import accuracy, cross_entropy, fit, predict
from pipeline.verify import parity
from targets import get_backend, get_target
from targets._base import ExportRequest, Tolerance, run_all

REWIND_FILES = ("init.safetensors", "rewind.safetensors")  # in the train stage's folder
RANDOM_INPUTS = 32


@dataclass(frozen=True)
class CompressOptions:
    target: str
    out: Path = Path("dist")
    model: str = "small_cnn"
    data: str = "digits"
    config: Path | None = None
    seed: int = 0
    run_dir: Path | None = None
    overrides: dict = field(default_factory=dict)
    budgets: object = None  # pipeline.gate.Budgets, checked against the report
    weights: Path | None = None  # a trained teacher: the train stage loads it instead
    trust_pickle: bool = False
    # "train" or "distill" (`cli.py train` / `cli.py distill`): stop after that stage and write
    # its model (model.json + model.safetensors) into `out`; the run directory is the one
    # compress uses, so a later compress with the same options reuses the stages
    stop_after: str | None = None


STOP_AFTER = ("train", "distill")


def check_options(opts: CompressOptions):
    """What compress checks before any work; `compress --nproc` runs it before starting workers."""
    if opts.stop_after not in (None, *STOP_AFTER):
        raise ValueError(f"stop_after must be one of {STOP_AFTER} or None, got {opts.stop_after!r}")
    # training needs no target; pruning does (the widths are rounded for its backends)
    target = None if opts.stop_after == "train" else get_target(opts.target)
    if opts.stop_after and Path(opts.out).exists() and not Path(opts.out).is_dir():
        raise UsageError(
            f"--out {opts.out}: exists and is not a directory; give a directory "
            "for model.json and model.safetensors"
        )
    get_model_entry(opts.model)
    if is_user_model(opts.model):
        user_factory(opts.model)  # a missing file or factory fails before any work
    loaded = load_weights(opts.weights, opts.trust_pickle) if opts.weights is not None else None
    recipe = load_recipe(opts.config, opts.overrides)
    choices = (
        [] if target is None else _backend_choices(target, recipe)
    )  # a scheme a backend lacks fails here
    _check_models(recipe)
    return target, loaded, recipe, choices


def compress(opts: CompressOptions) -> dict | None:
    """The report on rank 0 (or a single process); None on the other ranks of a distributed run."""
    target, loaded, recipe, choices = check_options(opts)
    data = load_dataset(opts.data)
    distributed.init_from_env()  # under torchrun: join its process group
    log(f"data {data.summary()}")
    run = RunDir(opts.run_dir or Path("runs") / f"{opts.model}-{data.name}-seed{opts.seed}")
    log(f"run directory {run.root}")
    if distributed.is_main():
        write_json(run.root / "recipe.json", recipe.to_dict())
    c, h, w = data.input_shape
    spec = {
        "name": opts.model,
        "in_channels": c,
        "num_classes": data.num_classes,
        "input_size": h,
        "input_shape": [c, h, w],
    }
    fp = data.fingerprint()
    ctx = _Context(run, data, recipe, spec, opts.seed)

    weights = None
    if opts.weights is not None:
        weights = {
            "path": str(opts.weights),
            "sha256": sha256_file(Path(opts.weights)),
            "loaded_with": loaded[1],
        }
    rewind_snapshot = recipe.prune.rewind_epoch or None  # epoch k > 0: kept while training
    teacher = run.stage(
        "train",
        {
            "config": {
                **asdict(recipe.train),
                "spec": spec,
                "seed": opts.seed,
                "weights": weights,
                "rewind_snapshot": rewind_snapshot,
            },
            "data": fp,
        },
        lambda d: ctx.train(d, opts.weights, loaded),
        all_ranks=True,
    )
    if opts.stop_after == "train":
        return distributed.main_only(lambda: _write_model(opts, teacher), "writing the model")
    # pruning is decided once, on rank 0 (its fine-tuning between iterative steps too); the
    # other ranks receive the plan and weights with the stage's files
    pruned = run.stage(
        "prune",
        {
            "config": {
                **asdict(recipe.prune),
                "round_to": _round_to(recipe, target, opts.model),
                "student_model": recipe.distill.student_model,
                "finetune": {**asdict(recipe.distill), "train": asdict(recipe.train)}
                if recipe.prune.iterative_steps > 1
                else None,
            },
            "inputs": [teacher.digest],
            "data": fp,
        },
        lambda d: ctx.prune(d, teacher.dir, _round_to(recipe, target, opts.model)),
    )
    ext = recipe.distill.teacher_weights
    teacher_sha = sha256_file(Path(ext)) if ext and Path(ext).is_file() else None
    student = run.stage(
        "distill",
        {
            "config": {
                **asdict(recipe.distill),
                "seed": opts.seed,
                "teacher_sha256": teacher_sha,
                "train": asdict(recipe.train),
            },
            "inputs": [teacher.digest, pruned.digest],
            "data": fp,
        },
        lambda d: ctx.distill(d, teacher.dir, pruned.dir),
        all_ranks=True,
    )
    if opts.stop_after == "distill":
        return distributed.main_only(lambda: _write_model(opts, student), "writing the model")
    # the rest is single-process: rank 0 runs it, the other ranks wait and then exit 0
    return distributed.main_only(
        lambda: _finish(opts, ctx, target, choices, data, recipe, spec, teacher, pruned, student),
        "calibrate, export, verify, profile, bundle",
    )


def _finish(opts, ctx, target, choices, data, recipe, spec, teacher, pruned, student) -> dict:
    run, fp = ctx.run, data.fingerprint()
    calibrated = run.stage(
        "calibrate",
        {"config": asdict(recipe.calibrate), "inputs": [student.digest], "data": fp},
        lambda d: ctx.calibrate(d, student.dir),
    )
    calib = _calibration(data, recipe.quantize.calibration_images, opts.seed)

    backends = {}
    for choice in choices:
        backends[choice.backend] = ctx.backend(choice, calibrated, calib, target.devices, teacher)
    # what the bundle holds: the pruned model, or the recipe's student architecture
    shipped = {**spec, "name": recipe.distill.student_model or spec["name"]}
    report = _report(
        opts, target, data, recipe, shipped, teacher, pruned, student, calibrated, backends
    )
    report["teacher_model"] = spec["name"]
    if opts.budgets is not None:
        report["gate"] = evaluate(report, opts.budgets)
        broken = [ln["name"] for ln in report["gate"] if ln["verdict"] == "fail"]
        if broken:
            report["ok"] = False
            report["problems"].append(f"budget broken: {', '.join(broken)}")
    out = bundle.publish(Path(opts.out) / target.name, report, backends, data, shipped)
    log(f"bundle written to {out}")
    print(summary_table(report))
    return report


def _write_model(opts: CompressOptions, stage) -> dict:
    """`cli.py train` / `distill`: the stage's model.json (spec, pruning plan) and
    model.safetensors, copied into opts.out (each file written whole, then renamed)."""
    out = Path(opts.out)
    files = []
    for name in ("model.json", "model.safetensors"):
        write_bytes(out / name, (stage.dir / name).read_bytes())
        files.append(str(out / name))
    acc = stage.info.get("accuracy", {}).get("value")
    log(
        f"[{stage.name}] wrote {' and '.join(files)}"
        + (f" (test accuracy {acc:.2%}, measured)" if acc is not None else "")
    )
    return {"stage": stage.name, "files": files}


def _backend_choices(target, recipe: Recipe) -> list:
    """The target's backends with the recipe's quantize.precision overrides, checked."""
    q = recipe.quantize
    names = [c.backend for c in target.backends]
    for backend, scheme in q.precision.items():
        if backend not in names:
            raise UsageError(
                f"recipe key quantize.precision.{backend}: target {target.name} has "
                f"no such backend; its backends: {', '.join(names)}"
            )
        schemes = get_backend(backend).precisions
        if scheme not in schemes:
            raise UsageError(
                f"recipe key quantize.precision.{backend}: unknown scheme "
                f"{scheme!r}; available: {', '.join(schemes)}"
            )
    choices = [
        replace(c, precision=q.precision.get(c.backend, c.precision)) for c in target.backends
    ]
    if q.qat_epochs and not any(
        c.backend == "executorch-xnnpack" and c.precision == "int8" for c in choices
    ):
        raise UsageError(
            f"recipe key quantize.qat_epochs: quantization-aware training is for "
            f"ExecuTorch int8, which target {target.name} does not build here"
        )
    return choices


def _check_models(recipe: Recipe) -> None:
    """Zoo names and teacher weights in the recipe fail before any work."""
    d = recipe.distill
    for key, name in (("student_model", d.student_model), ("teacher_model", d.teacher_model)):
        if name is None:
            continue
        try:
            get_model_entry(name)
            if is_user_model(name):
                user_factory(name)
        except UsageError as e:
            raise UsageError(f"recipe key distill.{key}: {e}") from None
    if d.teacher_weights is not None and not Path(d.teacher_weights).is_file():
        raise UsageError(f"recipe key distill.teacher_weights: no such file {d.teacher_weights}")


def _rewind_name(epoch: int) -> str:
    return "initialisation" if epoch == 0 else f"the end of training epoch {epoch}"


def _sparsity_figures(info: dict, what: str) -> dict:
    on = f"conv and linear weights of the {what}"
    return {
        "sparsity": counted(info["sparsity"], "fraction of weights that are zero", on),
        "zeros": counted(info["zeros"], "weights", on),
        "weights": counted(info["weights"], "weights", on),
    }


def _round_to(recipe: Recipe, target, model_name: str) -> int:
    return recipe.prune.round_to or target.round_to or get_model_entry(model_name).round_to


def _calibration(data: Dataset, n: int, seed: int) -> dict:
    """Calibration images: a seeded draw from the training split, never the test split."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(data.x_train), size=min(n, len(data.x_train)), replace=False))
    x = data.x_train[idx]
    return {
        "x": x,
        "count": len(idx),
        "split": "train",
        "sha256": hashlib.sha256(x.tobytes()).hexdigest(),
    }


class _Context:
    """The stage bodies: each takes its stage folder and returns the info to record."""

    def __init__(self, run: RunDir, data: Dataset, recipe: Recipe, spec: dict, seed: int):
        self.run, self.data, self.recipe, self.spec, self.seed = run, data, recipe, spec, seed
        self.example = example_input(spec)

    def _figures(self, model, what: str) -> dict:
        d = self.data
        macs, params = count(model, self.example)
        logits = predict(model, d.x_test)
        on = f"{what}, PyTorch fp32, {len(d.y_test)} test images"
        m = calibration.metrics(logits, d.y_test, self.recipe.calibrate.bins)
        return {
            "reliability_data": m,  # raw bins for the diagram; the figures are in "calibration"
            "accuracy": measured(accuracy(logits, d.y_test), "top1", on),
            "calibration": calibration.figures(m, on),
            "macs": counted(macs, "MAC", f"{what}, one {tuple(self.example.shape)} input"),
            "params": counted(params, "parameters", what),
        }

    def train(self, folder: Path, weights: Path | None = None, loaded=None) -> dict:
        cfg = self.recipe.train
        torch.manual_seed(self.seed)
        s = self.spec
        model = create_model(s["name"], s["in_channels"], s["num_classes"], s["input_size"])
        extra = {}
        if weights is not None:
            state, how = loaded
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                raise UsageError(
                    f"--weights {weights}: does not fit --model {s['name']}: "
                    f"{str(e).splitlines()[0]}"
                ) from None
            log(f"[train] loaded the teacher from {weights} ({how}); no training")
            extra = {"weights_loaded_with": how, "trusted_pickle": "trust-pickle" in how}
            check_finite(model, f"--weights {weights}")
        else:
            log(f"[train] {s['name']} on {self.data.name}: {cfg.epochs} epochs")
            # the initial weights (and, for rewinding to epoch k, the weights after epoch k)
            # are what a lottery ticket is rewound to (Frankle & Carbin)
            save_weights(folder / REWIND_FILES[0], model)
            k = self.recipe.prune.rewind_epoch  # <= train.epochs (Recipe.check)

            def snapshot(epoch, m):
                if epoch == k:
                    save_weights(folder / REWIND_FILES[1], m)

            sparse = SparsityTraining(model, self.example, cfg, self.seed)
            try:
                loss = fit(
                    model,
                    self.data.x_train,
                    self.data.y_train,
                    epochs=cfg.epochs,
                    batch_size=cfg.batch_size,
                    lr=cfg.lr,
                    weight_decay=cfg.weight_decay,
                    seed=self.seed,
                    desc="train teacher",
                    on_epoch=snapshot if k else None,
                    loss_fn=sparse.wrap(cross_entropy),
                )
            finally:
                sparse.close()
            extra = {"final_loss": loss[-1], "sparsity_training": sparse.describe()}
            check_finite(model, "train")
        save_model(folder, model, s)
        info = {**self._figures(model, "teacher"), **extra}
        log(f"[train] teacher accuracy {info['accuracy']['value']:.2%}")
        return info

    def prune(self, folder: Path, teacher_dir: Path, round_to: int) -> dict:
        """Structured pruning (one-shot, or iterative with KD fine-tuning between the steps),
        then optionally lottery-ticket rewinding and unstructured magnitude sparsity."""
        cfg = self.recipe.prune
        teacher, spec, _ = load_model(teacher_dir)
        if self.recipe.distill.student_model:
            return self._fresh_student(folder, teacher)
        data = (self.data.x_train, self.data.y_train)
        steps = cfg.iterative_steps
        log(
            f"[prune] {cfg.importance} importance, keep {cfg.kept_fraction:.0%} of the {cfg.target}, "
            f"channels rounded to multiples of {round_to}"
            + (
                f", {steps} steps on a cubic schedule, {cfg.finetune_epochs} KD epochs between"
                if steps > 1
                else ", one shot"
            )
        )
        if steps > 1:
            res = prune_iteratively(
                teacher,
                self.example,
                cfg,
                data,
                self._finetune_between_steps(teacher, steps),
                steps,
                round_to,
            )
        else:
            res = prune_with_config(teacher, self.example, cfg, data, round_to)
        model, plan = res.model, res.plan
        extra = {}
        if cfg.sparsity > 0:  # the mask is chosen on the trained weights, before any rewind
            masked, sparsity = prune_unstructured(model, cfg.sparsity)
            masks = {
                n: (m.weight != 0) for n, m in masked.named_modules() if n in sparsity["per_layer"]
            }
            plan["unstructured"] = {k: sparsity[k] for k in ("asked", "sparsity", "method")}
            extra["unstructured"] = _sparsity_figures(sparsity, "pruned model")
            model = masked
        if cfg.rewind_epoch is not None:
            model = self._rewind(model, plan, spec, teacher_dir, cfg.rewind_epoch)
            if cfg.sparsity > 0:
                apply_masks(model, masks)
            plan["rewound_to"] = _rewind_name(cfg.rewind_epoch)
            extra["rewound_to"] = plan["rewound_to"]
        check_finite(model, "prune")
        save_model(folder, model, spec, plan)
        info = self._figures(model, "pruned, before fine-tuning")
        info.update(
            extra,
            ratio=res.ratio,
            widths={"before": layer_widths(teacher), "after": layer_widths(model)},
        )
        log(
            f"[prune] MACs {res.macs_before:,} -> {res.macs_after:,} "
            f"({res.macs_after / res.macs_before:.0%})"
            + (
                f", {extra['unstructured']['sparsity']['value']:.0%} of the conv/linear weights "
                "zeroed"
                if "unstructured" in extra
                else ""
            )
            + (f", rewound to {extra['rewound_to']}" if "rewound_to" in extra else "")
            + f", accuracy before fine-tuning {info['accuracy']['value']:.2%}"
        )
        return info

    def _fresh_student(self, folder: Path, teacher) -> dict:
        """distill.student_model: another architecture, initialised (seeded), not pruned."""
        name, s = self.recipe.distill.student_model, self.spec
        torch.manual_seed(self.seed)
        student = create_model(name, s["in_channels"], s["num_classes"], s["input_size"])
        save_model(folder, student, {**s, "name": name})
        info = self._figures(student, f"{name} student, initialised, before distillation")
        info["widths"] = {"before": layer_widths(teacher), "after": layer_widths(student)}
        info["student_model"] = name
        log(
            f"[prune] not pruning: the student is {name} (distill.student_model), "
            f"MACs {info['macs']['value']:,} vs the teacher's {count(teacher, self.example)[0]:,}"
        )
        return info

    def _finetune_between_steps(self, teacher, steps: int):
        """KD fine-tuning after every iterative step but the last (the distill stage follows)."""
        cfg, d = self.recipe, self.data

        def finetune(model, step):
            if step == steps or cfg.prune.finetune_epochs == 0:
                return
            sparse = SparsityTraining(model, self.example, cfg.train, self.seed + step)
            try:  # the sparsity-training options act during pruning too
                fit(
                    model,
                    d.x_train,
                    d.y_train,
                    epochs=cfg.prune.finetune_epochs,
                    batch_size=cfg.distill.batch_size,
                    lr=cfg.distill.lr,
                    seed=self.seed + step,
                    desc=f"fine-tune step {step}/{steps}",
                    loss_fn=sparse.wrap(
                        kd_loss_fn(teacher, cfg.distill.temperature, cfg.distill.alpha)
                    ),
                )
            finally:
                sparse.close()

        return finetune

    def _rewind(self, model, plan, spec, teacher_dir: Path, epoch: int):
        path = teacher_dir / REWIND_FILES[0 if epoch == 0 else 1]
        if not path.is_file():
            raise UsageError(
                "recipe key prune.rewind_epoch: the train stage kept no weights to "
                "rewind to (--weights skips training); train here or drop the key"
            )
        log(
            f"[prune] lottery ticket: surviving weights reset to their values at "
            f"{_rewind_name(epoch)}"
        )
        return rewind(model, plan, load_weights_file(path), spec)

    def distill(self, folder: Path, teacher_dir: Path, pruned_dir: Path) -> dict:
        """Hinton KD (plus optional feature hints) from the teacher into the student."""
        cfg = self.recipe.distill
        teacher, who = self._teacher(teacher_dir)
        student, spec, plan = load_model(pruned_dir)
        what = (
            "the pruned student"
            if cfg.student_model is None
            else f"the {cfg.student_model} student (from scratch)"
        )
        log(
            f"[distill] {what} from {who}: T={cfg.temperature}, alpha={cfg.alpha}, "
            f"{cfg.epochs} epochs"
            + (f", feature hints x{cfg.feature_weight:g}" if cfg.feature_weight else "")
        )
        loss = kd_loss_fn(teacher, cfg.temperature, cfg.alpha)
        hints = None
        if cfg.feature_weight:
            pairs = feature_pairs(student, teacher, cfg.feature_layers)
            hints = FeatureHints(student, teacher, pairs, self.example)
            student.add_module("_feature_hints", hints)  # its adapters train with the student
            loss = kd_feature_loss_fn(
                teacher, hints, cfg.temperature, cfg.alpha, cfg.feature_weight
            )
        # unstructured zeros stay zero while fine-tuning (the masks are held as hooks)
        masks = masks_of_zeros(student) if plan and plan.get("unstructured") else {}
        apply_masks(student, masks, hold=True)
        try:
            fit(
                student,
                self.data.x_train,
                self.data.y_train,
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                seed=self.seed,
                desc="distill student",
                loss_fn=loss,
            )
        finally:
            if hints is not None:
                hints.close()
                del student._feature_hints
        remove_masks(student)
        check_finite(student, "distill")
        save_model(folder, student, spec, plan)
        info = self._figures(student, "distilled student")
        info["teacher"] = who
        if hints is not None:
            info["feature_hints"] = [f"{s} <- {t}" for s, t in hints.pairs]
        if masks:
            info["unstructured"] = _sparsity_figures(
                prune_unstructured(student, 0.0)[1], "distilled student (masks held)"
            )
        log(f"[distill] student accuracy {info['accuracy']['value']:.2%}")
        return info

    def _teacher(self, teacher_dir: Path):
        """The dense model of the train stage, or the recipe's zoo teacher with its weights."""
        cfg = self.recipe.distill
        if cfg.teacher_model is None:
            return load_model(teacher_dir)[0], "the dense teacher"
        s = self.spec
        state, how = load_weights(Path(cfg.teacher_weights), False)
        teacher = create_model(
            cfg.teacher_model, s["in_channels"], s["num_classes"], s["input_size"]
        )
        try:
            teacher.load_state_dict(state)
        except RuntimeError as e:
            raise UsageError(
                f"recipe key distill.teacher_weights {cfg.teacher_weights}: does not "
                f"fit distill.teacher_model {cfg.teacher_model}: "
                f"{str(e).splitlines()[0]}"
            ) from None
        check_finite(teacher, f"distill.teacher_weights {cfg.teacher_weights}")
        acc = accuracy(predict(teacher, self.data.x_test), self.data.y_test)
        log(
            f"[distill] teacher {cfg.teacher_model} from {cfg.teacher_weights} ({how}): "
            f"test accuracy {acc:.2%}"
        )
        return teacher.eval(), f"{cfg.teacher_model} ({cfg.teacher_weights})"

    def calibrate(self, folder: Path, student_dir: Path) -> dict:
        """Fit T on the validation split, fold it into the classifier (W/T, b/T)."""
        cfg, d = self.recipe.calibrate, self.data
        student, spec, plan = load_model(student_dir)
        ev = calibration.evaluate(
            predict(student, d.x_val), d.y_val, predict(student, d.x_test), d.y_test, cfg.bins
        )
        fit = ev["fit"]
        applied = 1.0
        if cfg.temperature_scaling:
            applied = (
                fit["temperature"] if cfg.apply == "always" else fit["recommended_temperature"]
            )
        folded = calibration.fold_temperature(student, applied, self.example)
        save_model(folder, folded, spec, plan)
        on = f"distilled student, {len(d.y_test)} test images, T fitted on {len(d.y_val)} validation images"
        cv = fit.get("cv")
        why = (
            "switched off (calibrate.temperature_scaling: false)"
            if not cfg.temperature_scaling
            else "fitted but not folded: "
            + fit.get(
                "note", "cross-validation on the validation split says scaling does not lower NLL"
            )
            if applied == 1.0
            else "folded"
        )
        if applied != 1.0 and cv and not cv["scaling_helps"]:
            why += (
                f" (calibrate.apply: always; note: 5-fold cross-validation inside the "
                f"{len(d.y_val)} validation images found scaling raised NLL, "
                f"{cv['nll_unscaled']:.4f} -> {cv['nll_scaled']:.4f}; `calibrate.apply: "
                "fitted` folds T only when it does not)"
            )
        ch = ev["nll_change"]
        se = f" ± {ch['standard_error']:.4f} (1 s.e.)" if ch["standard_error"] is not None else ""
        log(
            f"[calibrate] temperature fitted {fit['temperature']:.3f}, applied {applied:.3f} ({why}); "
            f"test NLL {ev['before']['nll']:.4f} -> {ev['after']['nll']:.4f} with the fitted T "
            f"(change {ch['mean']:+.4f}{se})"
        )
        return {
            "temperature_fitted": fit["temperature"],
            "temperature_applied": applied,
            "folded": applied != 1.0,
            "decision": why,
            "cross_validation": fit.get("cv"),
            "before": calibration.figures(ev["before"], on + ", unscaled"),
            "after_fitted": calibration.figures(ev["after"], on + ", scaled by the fitted T"),
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

    def backend(self, choice, student, calib, devices=(), teacher=None) -> dict:
        """Export, verify and profile one backend; a failure is recorded, not raised, so the
        other backends still finish."""
        b = get_backend(choice.backend)
        key = f"{b.name}-{choice.precision}"
        qat = self._qat(b, choice, teacher)
        try:
            exp = self.run.stage(
                f"export/{key}",
                {
                    "config": {
                        "precision": choice.precision,
                        "options": list(choice.options),
                        "qat": qat and qat["config"],
                    },
                    "inputs": [student.digest],
                    "calibration": calib["sha256"],
                },
                lambda d: self.export(d, b, choice, student.dir, calib, qat),
            )
            ver = self.run.stage(
                f"verify/{key}",
                {"inputs": [exp.digest], "data": self.data.fingerprint()},
                lambda d: self.verify(d, b, exp, choice, student.dir, calib),
            )
            prof = self.run.stage(
                f"profile/{key}",
                {
                    "config": asdict(self.recipe.profile),
                    "inputs": [exp.digest, student.digest],
                    "devices": list(devices),
                },
                lambda d: self.profile(d, b, exp, student.dir, devices),
            )
        except SlimshipError:
            raise
        except Exception as e:  # noqa: BLE001  (a backend's converter or runtime failed: name it, go on)
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            log(f"[{key}] FAILED: {msg}")
            return {"backend": b.name, "precision": choice.precision, "error": msg}
        return {
            "backend": b.name,
            "precision": choice.precision,
            "export": exp,
            "verify": ver,
            "profile": prof,
            "file": b.filename,
        }

    def _qat(self, b, choice, teacher) -> dict | None:
        """Quantization-aware training for ExecuTorch int8: KD from the dense teacher."""
        q, d = self.recipe.quantize, self.recipe.distill
        if not q.qat_epochs or b.name != "executorch-xnnpack" or choice.precision != "int8":
            return None
        data = self.data

        def train(prepared):
            dense, _, _ = load_model(teacher.dir)
            log(
                f"[export] {b.name}: quantization-aware training, {q.qat_epochs} epochs, KD from "
                "the dense teacher"
            )
            fit(
                prepared,
                data.x_train,
                data.y_train,
                epochs=q.qat_epochs,
                batch_size=d.batch_size,
                lr=q.qat_lr,
                seed=self.seed,
                desc="QAT",
                loss_fn=kd_loss_fn(dense, d.temperature, d.alpha),
            )

        return {
            "config": {
                "epochs": q.qat_epochs,
                "lr": q.qat_lr,
                "kd": asdict(d),
                "teacher": teacher.digest,
            },
            "train": train,
        }

    def export(
        self, folder: Path, b, choice, student_dir: Path, calib: dict, qat: dict | None = None
    ) -> dict:
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
        exp = b.export(
            ExportRequest(
                model,
                self.example,
                choice.precision,
                calib["x"] if choice.precision != "fp32" else None,
                folder,
                dict(choice.options),
                train=qat and qat["train"],
            )
        )
        log(f"[export] {b.name}: wrote {exp.path.name} in {time.perf_counter() - start:.1f} s")
        faults.point(f"export:{b.name}")
        rng = np.random.default_rng(1234)
        x_rand = rng.standard_normal((RANDOM_INPUTS, *self.spec["input_shape"])).astype(np.float32)
        with torch.no_grad():
            # one image at a time: quantized references are exported graphs fixed to batch 1
            ref = {
                name: torch.cat(
                    [exp.reference(torch.from_numpy(x[i : i + 1])) for i in range(len(x))]
                ).numpy()
                for name, x in (("test", self.data.x_test), ("random", x_rand))
            }
        np.savez(folder / "reference.npz", test=ref["test"], random=ref["random"], x_random=x_rand)
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
                "data": f"training split ({len(self.data.y_train)} images), KD from "
                "the dense teacher",
            }
            if qat
            else None,
        }

    def verify(self, folder: Path, b, exp, choice, student_dir: Path, calib: dict) -> dict:
        path = exp.dir / exp.info["file"]
        ref = np.load(exp.dir / "reference.npz")
        ok, why = b.can_run()
        if not ok:  # e.g. Core ML on Linux: check what can be checked, and say so
            check = b.structural_check(path, exp.info["io"])
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
        runner = b.load(path)
        out_test = run_all(runner, self.data.x_test)
        out_rand = run_all(runner, ref["x_random"])
        np.savez(folder / "outputs.npz", test=out_test, random=out_rand)
        block = parity(
            ref["test"],
            out_test,
            ref["random"],
            out_rand,
            self.data.y_test,
            Tolerance(**exp.info["tolerance"]),
        )
        block["calibration"] = calibration.metrics(
            out_test, self.data.y_test, self.recipe.calibrate.bins
        )
        if block["state"] == "failed" and hasattr(b, "first_divergence"):
            block["first_divergence"] = self.locate(b, exp, choice, student_dir, calib)
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

    def locate(self, b, exp, choice, student_dir: Path, calib: dict) -> dict:
        """Re-lower with every layer tapped and name the first one that departs."""
        model, _, _ = load_model(student_dir)
        tol = exp.info["tolerance"]
        threshold = tol.get("min_sqnr_db") or 60.0  # fp32 layers agree to ~130 dB when right
        log(f"[verify] {b.name}: locating the first divergent layer (taps, SQNR < {threshold} dB)")
        req = ExportRequest(
            model,
            self.example,
            choice.precision,
            calib["x"] if choice.precision != "fp32" else None,
            Path("."),
            dict(choice.options),
        )
        found = b.first_divergence(req, self.data.x_test[:1], threshold)
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

    def profile(self, folder: Path, b, exp, student_dir: Path, devices) -> dict:
        """Measured on this host where the file runs; estimated for the target's devices."""
        from pipeline import estimate, profile

        out = {"latency": None, "estimates": self._estimates(exp, student_dir, devices)}
        ok, why = b.can_run()
        if not ok:
            out["why"] = why
            return out
        cfg, path = self.recipe.profile, exp.dir / exp.info["file"]
        x = self.data.x_test[:1]
        out["latency"] = [measure_latency(b, path, x, t, cfg.warmup, cfg.runs) for t in cfg.threads]
        log(
            f"[profile] {b.name}: p50 {out['latency'][0]['p50']['value']:.3f} ms "
            f"({out['latency'][0]['threads']} thread)"
        )
        out["memory"] = _guarded(lambda: profile.peak_rss(b.name, path, x.shape, threads=1))
        if b.name == "executorch-xnnpack":
            out["memory"].update(_guarded(lambda: estimate.planned_memory(path)))
            out["op_breakdown"] = _guarded(lambda: profile.op_breakdown(path, x, threads=1))
        return out

    def _estimates(self, exp, student_dir: Path, devices) -> dict:
        from pipeline import estimate

        if not devices:
            return {}
        model, _, _ = load_model(student_dir)
        precision = "int8" if exp.info["precision"] == "int8" else "fp32"
        return _guarded(
            lambda: estimate.estimate_for_devices(
                model, self.example, precision, list(devices), threads=1
            )
        )


def _report(
    opts, target, data, recipe, spec, teacher, pruned, student, calibrated, backends
) -> dict:
    stages = {
        "teacher": teacher.info,
        "pruned": pruned.info,
        "distilled": student.info,
        "temperature": calibrated.info,
    }
    out, problems = {}, []
    for name, r in backends.items():
        if "error" in r:
            out[name] = {"precision": r["precision"], "error": r["error"]}
            problems.append(f"{name}: export failed: {r['error']}")
            continue
        e, v, p = r["export"].info, r["verify"].info, r["profile"].info
        path = r["export"].dir / e["file"]
        out[name] = {
            "file": e["file"],
            "precision": e["precision"],
            "bytes": counted(_size(path), "bytes", e["file"]),
            # the model the file was exported from (the calibrated student: same graph)
            "macs": {
                **student.info["macs"],
                "on": f"{e['file']}'s model, " + student.info["macs"]["on"],
            },
            "params": {
                **student.info["params"],
                "on": f"{e['file']}'s model, " + student.info["params"]["on"],
            },
            # what an app store download sees; unstructured zeros shrink this, not `bytes`
            "bytes_compressed": counted(
                _compressed_size(path), "bytes", f"{e['file']}, zlib level 9"
            ),
            "parity": parity_figures(v, e["file"]) if "test_split" in v else v,
            "preflight": e["preflight"],
            "io": e["io"],
            "calibration": e["calibration"],
            "qat": e.get("qat"),
            "latency": p["latency"],
            "memory": p.get("memory"),
            "estimates": p.get("estimates"),
            "op_breakdown": p.get("op_breakdown"),
            "reused": {"export": r["export"].reused, "verify": r["verify"].reused},
            "calibration_metrics": calibration.figures(
                v["calibration"], f"{e['file']}, {len(data.y_test)} test images"
            )
            if "calibration" in v
            else None,
            "reliability_data": v.get("calibration"),
        }
        if v["state"] == "failed":
            where = v.get("first_divergence", {}).get("problem")
            problems.append(
                f"{name} ({e['file']}): parity failed: {'; '.join(v['problems'])}"
                + (f"; {where}" if where else "")
            )
    return {
        "slimship_report": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": target.name,
        "model": spec,
        "host": host(),
        "versions": library_versions(),
        "data": {
            "name": data.name,
            "fingerprint": data.fingerprint(),
            **{
                k: counted(len(y), "images", f"{k} split of {data.name}")
                for k, y in (("train", data.y_train), ("val", data.y_val), ("test", data.y_test))
            },
        },
        "recipe": recipe.to_dict(),
        "seed": opts.seed,
        "stages": stages,
        "backends": out,
        "ok": not problems,
        "problems": problems,
    }


def _guarded(fn) -> dict:
    """A profiling extra that fails is reported with its error, not raised: the file itself
    was already verified, and the report says what could not be measured."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        log(f"[profile] not measured: {msg}")
        return {"error": msg}


def _compressed_size(path: Path) -> int:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return sum(len(zlib.compress(p.read_bytes(), 9)) for p in files)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
