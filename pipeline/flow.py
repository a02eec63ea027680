"""The order of `compress`'s stages: train -> prune -> distill -> calibrate -> per backend
(export -> verify -> profile) -> report + bundle. Each stage reuses its result from the run
directory when its key is unchanged; `stop_after` ends after train or distill (`cli.py train`,
`cli.py distill`) and writes that stage's model instead of a bundle."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from ground.errors import SlimshipError
from ground.log import log
from models import get_model_entry
from pipeline import distributed, lock
from pipeline.data import load_dataset
from pipeline.rundir import RunDir, write_bytes, write_json
from pipeline.sized_epochs import SMALL_DATA, sized_to
from pipeline.stages import confidence, distill, export, profile, prune, report, train, verify
from pipeline.stages._job import Job
from targets import get_backend


def run(opts, target, loaded, recipe, choices) -> dict | None:
    """The report on rank 0 (or a single process); None on the other ranks of a distributed run."""
    data = load_dataset(opts.data, input_size=opts.input_size)
    distributed.init_from_env()  # under torchrun: join its process group
    log(f"data {data.summary()}")
    root = opts.run_dir or Path("runs") / f"{opts.model}-{data.name}-seed{opts.seed}"
    with _exclusive(Path(root), None if opts.stop_after else Path(opts.out) / target.name):
        return _stages(_job(opts, recipe, data, root), opts, target, loaded, choices)


def _exclusive(root: Path, bundle: Path | None) -> ExitStack:
    """The run directory and the bundle folder, held by this run (rank 0) until it ends."""
    held = ExitStack()
    if not distributed.is_main():
        return held
    with ExitStack() as taking:  # a busy bundle releases the run directory again
        taking.enter_context(lock.exclusive(root / ".lock", f"run directory {root}"))
        if bundle is not None:
            # a run that fails before its bundle leaves no --out folder behind
            where, fresh = bundle.parent / f".{bundle.name}.lock", not bundle.parent.exists()
            taking.enter_context(
                lock.exclusive(where, f"bundle folder {bundle}", tidy_folder=fresh)
            )
        held.push(taking.pop_all())
    return held


def _stages(job: Job, opts, target, loaded, choices) -> dict | None:
    teacher = train.run(job, opts.weights, loaded)
    if opts.stop_after == "train":
        return distributed.main_only(lambda: _write_model(opts, teacher), "writing the model")
    pruned = prune.run(job, teacher, _round_to(job.recipe, target, opts.model), choices)
    student = distill.run(job, teacher, pruned)
    if opts.stop_after == "distill":
        return distributed.main_only(lambda: _write_model(opts, student), "writing the model")
    # the rest is single-process: rank 0 runs it, the other ranks wait and then exit 0
    stages = {"teacher": teacher, "pruned": pruned, "distilled": student}
    return distributed.main_only(
        lambda: _finish(job, opts, target, choices, stages),
        "calibrate, export, verify, profile, bundle",
    )


def _job(opts, recipe, data, root: Path) -> Job:
    run_dir = RunDir(root)
    log(f"run directory {run_dir.root}")
    recipe, sized = sized_to(recipe, len(data.y_train))
    if len(data.y_train) > SMALL_DATA and sized:
        log(
            f"[data] {len(data.y_train):,} training images: "
            + ", ".join(f"{k} {v}" for k, v in sized.items())
            + " (fewer epochs of more steps; set them in the recipe to choose)"
        )
    if distributed.is_main():
        write_json(run_dir.root / "recipe.json", recipe.to_dict())
    c, h, w = data.input_shape
    spec = {
        "name": opts.model,
        "in_channels": c,
        "num_classes": data.num_classes,
        "input_size": h,
        "input_shape": [c, h, w],
    }
    return Job(run_dir, data, recipe, spec, opts.seed)


def _finish(job: Job, opts, target, choices, stages: dict) -> dict:
    calibrated = confidence.run(job, stages["distilled"])
    calib = export.calibration_images(job)
    backends = {
        c.backend: _backend(job, c, calibrated, calib, target.devices, stages["teacher"])
        for c in choices
    }
    # what the bundle holds: the pruned model, or the recipe's student architecture
    shipped = {**job.spec, "name": job.recipe.distill.student_model or job.spec["name"]}
    infos = {name: s.info for name, s in stages.items()} | {"temperature": calibrated.info}
    return report.publish(job, opts, target, infos, backends, shipped)


def _backend(job: Job, choice, student, calib: dict, devices, teacher) -> dict:
    """Export, verify and profile one backend; a failure is recorded, not raised, so the other
    backends still finish."""
    b = get_backend(choice.backend)
    try:
        exp = export.run(job, b, choice, student, calib, teacher)
        ver = verify.run(job, b, choice, exp, student, calib)
        prof = profile.run(job, b, choice, exp, student, devices)
    except SlimshipError:
        raise
    except Exception as e:  # noqa: BLE001  (a backend's converter or runtime failed: name it, go on)
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        log(f"[{b.name}-{choice.precision}] FAILED: {msg}")
        return {"backend": b.name, "precision": choice.precision, "error": msg}
    return {
        "backend": b.name,
        "precision": choice.precision,
        "export": exp,
        "verify": ver,
        "profile": prof,
        "file": b.filename,
    }


def _round_to(recipe, target, model_name: str) -> int:
    return recipe.prune.round_to or target.round_to or get_model_entry(model_name).round_to


def _write_model(opts, stage) -> dict:
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
