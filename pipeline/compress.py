"""`compress`: the options, what is checked before any work, and the run (pipeline/flow.py
orders the stages: train -> prune -> distill -> calibrate -> export -> verify -> profile ->
bundle; the bundle is published last, as a whole)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ground.errors import UsageError
from models import get_model_entry
from models._user import load_weights
from pipeline import bundle, flow
from pipeline.config import Recipe, load_recipe
from targets import get_backend, get_target, list_backends


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
    input_size: int | None = None  # image folders: images decoded at N x N


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
    get_model_entry(opts.model)  # a missing file, factory or architecture fails here
    loaded = load_weights(opts.weights, opts.trust_pickle) if opts.weights is not None else None
    recipe = load_recipe(opts.config, opts.overrides)
    # a scheme a backend lacks fails here
    choices = [] if target is None else _backend_choices(target, recipe)
    if not opts.stop_after:  # a folder of the user's own is never replaced
        bundle.check_output(Path(opts.out) / target.name)
    _check_models(recipe)
    return target, loaded, recipe, choices


def compress(opts: CompressOptions) -> dict | None:
    """The report on rank 0 (or a single process); None on the other ranks of a distributed run."""
    return flow.run(opts, *check_options(opts))


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
        c.precision in get_backend(c.backend).qat_precisions for c in choices
    ):
        offered = [
            f"{b.title} {p}" for b in map(get_backend, list_backends()) for p in b.qat_precisions
        ]
        raise UsageError(
            f"recipe key quantize.qat_epochs: quantization-aware training is for "
            f"{' or '.join(offered)}, which target {target.name} does not build here"
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
        except UsageError as e:
            raise UsageError(f"recipe key distill.{key}: {e}") from None
    if d.teacher_weights is not None and not Path(d.teacher_weights).is_file():
        raise UsageError(f"recipe key distill.teacher_weights: no such file {d.teacher_weights}")
