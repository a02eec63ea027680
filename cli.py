"""slimship: make a PyTorch model small and fast for phones, and prove it.

A thin click layer over pipeline/ and targets/: each command builds options and calls the
library. Errors a user can fix print as one line and exit 2 (usage) or 1 (a failed check).
"""

from __future__ import annotations

import errno
import functools
import json
import sys
from pathlib import Path

import click

from ground.errors import SlimshipError


def one_line_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SlimshipError as e:
            from pipeline.distributed import RankLost, fail

            fail(str(e), e.exit_code, lost_rank=isinstance(e, RankLost))  # prints, exits
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            where = f" writing {e.filename}" if e.filename else ""
            click.echo(
                f"error: {e.strerror}{where}: free space (or fix permissions) and run "
                "again; finished stages and the previous bundle are kept",
                err=True,
            )
            sys.exit(1)

    return wrapper


def _output_files(*flags) -> None:
    """Files a command will write, checked before it works: not a directory."""
    from ground.errors import UsageError

    for flag, path in flags:
        if path is not None and Path(path).is_dir():
            raise UsageError(f"{flag} {path}: is a directory; give a file name")


# Recipe keys with a flag of their own on `compress`; any other key: --set section.key=value.
# (flag, recipe key, type, help); type list: the flag repeats; "mapping": repeats as NAME=VALUE
RECIPE_FLAGS = [
    ("--epochs", "train.epochs", int, None),
    ("--group-lasso", "train.group_lasso", float, "group lasso on channel groups, Wen et al."),
    ("--bn-l1", "train.bn_l1", float, "L1 on batch-norm scales, network slimming"),
    ("--targeted-dropout", "train.targeted_dropout", float, "Gomez et al.: drop probability"),
    (
        "--targeted-fraction",
        "train.targeted_fraction",
        float,
        "share of low-norm channels targeted",
    ),
    ("--dropout", "train.dropout", float, "untargeted channel dropout, the control"),
    ("--macs-fraction", "prune.macs_fraction", float, "keep at most this share of MACs"),
    ("--importance", "prune.importance", str, "l1, l2, bn_scale, taylor, hessian, random"),
    ("--iterative-steps", "prune.iterative_steps", int, "prune -> fine-tune steps, cubic schedule"),
    ("--rewind-epoch", "prune.rewind_epoch", int, "lottery ticket: rewind survivors to epoch k"),
    ("--sparsity", "prune.sparsity", float, "unstructured magnitude sparsity after channels"),
    ("--distill-epochs", "distill.epochs", int, None),
    ("--temperature", "distill.temperature", float, None),
    ("--alpha", "distill.alpha", float, None),
    ("--teacher-model", "distill.teacher_model", str, "a zoo teacher instead of the dense model"),
    ("--teacher-weights", "distill.teacher_weights", str, "its .safetensors"),
    ("--student-model", "distill.student_model", str, "a zoo student instead of the pruned one"),
    ("--feature-weight", "distill.feature_weight", float, "feature distillation weight"),
    ("--feature-layer", "distill.feature_layers", list, "student[:teacher] layer, repeatable"),
    ("--precision", "quantize.precision", "mapping", "BACKEND=SCHEME, e.g. coreml=palettize6"),
    ("--qat-epochs", "quantize.qat_epochs", int, "ExecuTorch int8 quantization-aware training"),
]


def _param(key: str) -> str:
    return "recipe_" + key.replace(".", "__")


def recipe_flags(fn=None, *, sections=None):
    """The RECIPE_FLAGS as click options (only those of `sections`, e.g. ("train",), if given)."""
    if fn is None:
        return functools.partial(recipe_flags, sections=sections)
    for flag, key, tp, what in reversed(RECIPE_FLAGS):
        if sections is not None and key.split(".")[0] not in sections:
            continue
        text = f"Override {key}" + (f" ({what})." if what else ".")
        many = tp in (list, "mapping")
        fn = click.option(flag, _param(key), type=str if many else tp, multiple=many, help=text)(fn)
    return fn


# options compress shares with train and distill (defined once; help texts name compress's use)
MODEL_OPTION = click.option(
    "--model",
    default="small_cnn",
    show_default=True,
    help="Zoo model (see `cli.py models`) or path/to/file.py:factory.",
)
DATA_OPTION = click.option(
    "--data",
    default="digits",
    show_default=True,
    help="'digits' (bundled), an .npz with x and y, a directory with train.npz/test.npz, or an "
    "image folder (one sub-folder of images per class; optional train/ val/ test/).",
)
INPUT_SIZE_OPTION = click.option(
    "--input-size",
    type=click.IntRange(8, 1024),
    help="Image folders: decode every image at N x N (RGB, shorter side resized, center crop) "
    "[default: 224].",
)
CONFIG_OPTION = click.option(
    "--config", type=click.Path(path_type=Path), help="Recipe YAML (see README)."
)
SEED_OPTION = click.option("--seed", default=0, show_default=True, type=int)
RUN_DIR_OPTION = click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    help="Where stage results are kept for reuse [default: runs/<model>-<data>-seed<seed>].",
)
SET_OPTION = click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any recipe key, e.g. --set prune.scope=global (repeatable).",
)
WEIGHTS_OPTION = click.option(
    "--weights",
    type=click.Path(path_type=Path),
    help="Trained teacher weights (.safetensors, or .pt/.pth loaded weights-only): skips training.",
)
TRUST_PICKLE_OPTION = click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow --weights that only unpickling can load (runs code from the file).",
)
NPROC_OPTION = click.option(
    "--nproc",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Training processes to start on this machine (torch.distributed:"
    " gloo on CPU, nccl on GPU); under torchrun leave it at 1.",
)


def recipe_overrides(flags: dict, settings=()) -> dict:
    """{"section.key": value} for the `--set` settings, then the recipe flags that were given."""
    from ground.errors import UsageError
    from pipeline.config import parse_setting

    out = dict(parse_setting(s) for s in settings)
    for flag, key, tp, _ in RECIPE_FLAGS:
        value = flags.get(_param(key))
        if value is None or value == ():
            continue
        if tp == "mapping":
            pairs = [v.partition("=") for v in value]
            bad = [v for v, (_, sep, right) in zip(value, pairs) if not sep or not right]
            if bad:
                raise UsageError(f"{flag} {bad[0]}: expected NAME=VALUE")
            value = {left: right for left, _, right in pairs}
        out[key] = list(value) if tp is list else value
    if flags.get("latency_target") is not None:
        out.update(_latency_target(flags["latency_target"]))
    return out


def _latency_target(text: str) -> dict:
    """--latency-target: a fraction of the dense model's measured latency, or ms@device."""
    from ground.errors import UsageError

    if "@" in text:
        from pipeline.prune.device_latency import parse_device_target

        parse_device_target(text)
        return {"prune.target": "latency", "prune.latency_target": text}
    try:
        value = float(text)
    except ValueError:
        raise UsageError(
            f"--latency-target {text}: give a fraction of the dense model's latency measured on "
            "the target's runtime here (0.5) or milliseconds on a device profile (3ms@pixel-8)"
        ) from None
    if not 0 < value <= 1:
        raise UsageError(f"--latency-target {text}: the fraction must be in (0, 1]")
    return {"prune.target": "latency", "prune.fraction": value}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Compress a PyTorch model for phones: train, prune, distill, quantize, export, verify,
    profile, report."""


@cli.command()
@click.option("--target", required=True, help="Platform to build for (see `cli.py targets`).")
@click.option(
    "--out",
    default="dist",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Output directory; the bundle goes to OUT/<target>/.",
)
@MODEL_OPTION
@DATA_OPTION
@INPUT_SIZE_OPTION
@CONFIG_OPTION
@SEED_OPTION
@RUN_DIR_OPTION
@recipe_flags()
@SET_OPTION
@click.option(
    "--budget",
    type=click.Path(path_type=Path),
    help="Budgets YAML: after the run, exit 1 if any line is broken (see `cli.py gate`).",
)
@click.option(
    "--latency-target",
    help="Prune to this fraction of the dense model's latency, measured through the target's "
    "runtime on this host (recipe prune.target latency, prune.fraction), e.g. 0.5; or to "
    "milliseconds estimated on a device profile, e.g. 3ms@pixel-8 (prune.latency_target).",
)
@WEIGHTS_OPTION
@TRUST_PICKLE_OPTION
@click.option(
    "--verify-arm64",
    "arm64",
    is_flag=True,
    help="Then run the bundle's files on emulated aarch64 (see `cli.py verify-arm64`; "
    "root cache from $SLIMSHIP_ARM64_CACHE).",
)
@NPROC_OPTION
@one_line_errors
def compress(
    target,
    out,
    model,
    data,
    config,
    seed,
    run_dir,
    settings,
    budget,
    weights,
    trust_pickle,
    arm64,
    nproc,
    **flags,
):
    """Run every stage and write the bundle OUT/<target>/; exit 1 if a file fails parity."""
    from pipeline import distributed
    from pipeline.compress import CompressOptions, check_options
    from pipeline.compress import compress as run
    from pipeline.gate import load_budgets

    budgets = load_budgets(budget) if budget else None  # a bad file fails before any work
    overrides = recipe_overrides(flags, settings)
    opts = CompressOptions(
        target=target,
        out=out,
        model=model,
        data=data,
        config=config,
        seed=seed,
        run_dir=run_dir,
        overrides=overrides,
        budgets=budgets,
        weights=weights,
        trust_pickle=trust_pickle,
        input_size=flags.get("input_size"),
    )
    if nproc > 1:  # check here once, then run this same command in nproc workers
        check_options(opts)
        argv = _argv(click.get_current_context(), skip=("nproc", "arm64"))
        code = distributed.launch(nproc, [str(Path(__file__).resolve()), "compress", *argv])
        if code != 0 or not arm64:
            sys.exit(code)
        report = json.loads((Path(out) / target / "report.json").read_text())
    else:
        report = run(opts)
        if report is None:  # a rank other than 0: rank 0 reports
            return
    if budgets is not None:
        from pipeline.gate import table

        click.echo(table(report["gate"]))
    problems = report["problems"]
    if arm64:
        from pipeline.verify_arm64 import table, verify_bundle

        block = verify_bundle(out / report["target"])
        click.echo(table(block))
        problems = problems + [f"arm64: {p}" for p in block["problems"]]
    if problems:
        for p in problems:
            click.echo(f"error: {p}", err=True)
        distributed.record_exit(1, "the report's problems")
        sys.exit(1)


def _stage_command(
    stop_after,
    target,
    out,
    model,
    data,
    config,
    seed,
    run_dir,
    settings,
    weights,
    trust_pickle,
    nproc,
    flags,
):
    """`train` / `distill`: compress's stages up to `stop_after`, the model written to OUT."""
    from pipeline import distributed
    from pipeline.compress import CompressOptions, check_options
    from pipeline.compress import compress as run

    opts = CompressOptions(
        target=target,
        out=out,
        model=model,
        data=data,
        config=config,
        seed=seed,
        run_dir=run_dir,
        overrides=recipe_overrides(flags, settings),
        weights=weights,
        trust_pickle=trust_pickle,
        stop_after=stop_after,
        input_size=flags.get("input_size"),
    )
    if nproc > 1:
        check_options(opts)
        argv = _argv(click.get_current_context(), skip=("nproc",))
        sys.exit(distributed.launch(nproc, [str(Path(__file__).resolve()), stop_after, *argv]))
    run(opts)  # rank 0 writes OUT and logs it; the other ranks get None


_STAGE_OPTIONS = [
    click.option(
        "--out",
        required=True,
        type=click.Path(path_type=Path),
        help="Directory for model.json (architecture, pruning plan) and model.safetensors.",
    ),
    MODEL_OPTION,
    DATA_OPTION,
    INPUT_SIZE_OPTION,
    CONFIG_OPTION,
    SEED_OPTION,
    RUN_DIR_OPTION,
    SET_OPTION,
    NPROC_OPTION,
]


def _stage_options(fn):
    for option in reversed(_STAGE_OPTIONS):
        fn = option(fn)
    return fn


@cli.command()
@_stage_options
@recipe_flags(sections=("train",))
@one_line_errors
def train(out, model, data, config, seed, run_dir, settings, nproc, **flags):
    """Train the dense model (compress's train stage, under torchrun or --nproc as well) and
    write it to OUT; `compress --weights OUT/model.safetensors` starts from it."""
    _stage_command(
        "train", None, out, model, data, config, seed, run_dir, settings, None, False, nproc, flags
    )


@cli.command()
@click.option(
    "--target",
    required=True,
    help="Platform the student is pruned for (its widths are rounded for it).",
)
@_stage_options
@recipe_flags(sections=("train", "prune", "distill"))
@WEIGHTS_OPTION
@TRUST_PICKLE_OPTION
@one_line_errors
def distill(
    target, out, model, data, config, seed, run_dir, settings, nproc, weights, trust_pickle, **flags
):
    """Train (or load) the teacher, prune it and distill it into the pruned student
    (compress's stages up to distill), and write the student to OUT: its pruning plan in
    model.json, its weights in model.safetensors."""
    _stage_command(
        "distill",
        target,
        out,
        model,
        data,
        config,
        seed,
        run_dir,
        settings,
        weights,
        trust_pickle,
        nproc,
        flags,
    )


@cli.command("verify-arm64")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    envvar="SLIMSHIP_ARM64_CACHE",
    help="Where the prepared arm64 root is kept [default: $SLIMSHIP_ARM64_CACHE or "
    "~/.cache/slimship/arm64-root].",
)
@click.option(
    "--cpu",
    default="cortex-a76",
    show_default=True,
    help="The CPU qemu emulates (`qemu-aarch64-static -cpu help`), with properties "
    "after a comma: cortex-a53 has no int8 dot product; max,sme=off has i8mm, "
    "SVE2 and bf16 (see docs/ARM64.md on max).",
)
@one_line_errors
def verify_arm64(bundle, cache, cpu):
    """Run BUNDLE's files on aarch64 (qemu) on its golden inputs; record it in report.json.

    Needs root, debootstrap and qemu-user-static; the arm64 root is prepared once (4-7
    minutes, 2.5 GB downloaded, 3.6 GB on disk) and cached. Exit 1 if a file fails; no latency
    is measured.
    """
    from pipeline.verify_arm64 import table, verify_bundle

    block = verify_bundle(bundle, cache, cpu)
    click.echo(table(block))
    if not block["ok"]:
        for p in block["problems"]:
            click.echo(f"error: {p}", err=True)
        sys.exit(1)


def _argv(ctx: click.Context, skip=()) -> list[str]:
    """The command line that gives ctx's parameter values, for workers to run again."""
    out = []
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        if p.name in skip or value is None or not isinstance(p, click.Option):
            continue
        if p.is_flag:
            out += [p.opts[0]] if value else []
        elif isinstance(value, tuple):  # a repeatable option
            for v in value:
                out += [p.opts[0], str(v)]
        else:
            out += [p.opts[0], str(value)]
    return out


@cli.command()
@click.argument("report", type=click.Path(path_type=Path))
@click.option("--budget", required=True, type=click.Path(path_type=Path), help="Budgets YAML.")
@click.option(
    "--baseline",
    type=click.Path(path_type=Path),
    help="An earlier report.json: show deltas; a regression beyond max_regression_percent fails.",
)
@click.option(
    "--junit", type=click.Path(path_type=Path), help="Write JUnit XML (one case per line)."
)
@click.option(
    "--json", "json_out", type=click.Path(path_type=Path), help="Write the verdicts as JSON."
)
@one_line_errors
def gate(report, budget, baseline, junit, json_out):
    """Check REPORT (a report.json) against budgets: exit 0 if all hold, 1 if any is broken."""
    from pipeline.gate import evaluate, junit_xml, load_budgets, load_report, table
    from pipeline.rundir import write_bytes, write_json

    _output_files(("--junit", junit), ("--json", json_out))
    budgets = load_budgets(budget)
    lines = evaluate(load_report(report), budgets, load_report(baseline) if baseline else None)
    click.echo(table(lines))
    if junit:
        write_bytes(junit, junit_xml(lines))
    if json_out:
        write_json(json_out, {"ok": all(ln["verdict"] == "pass" for ln in lines), "lines": lines})
    sys.exit(0 if all(ln["verdict"] == "pass" for ln in lines) else 1)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--threads", default=1, show_default=True, type=int)
@click.option("--runs", default=50, show_default=True, type=int, help="Timed runs after warm-up.")
@click.option(
    "--input-shape", help="Expected input shape, e.g. 1x3x32x32 (checked against the file)."
)
@click.option(
    "--json", "json_out", type=click.Path(path_type=Path), help="Write the figures as JSON."
)
@one_line_errors
def profile(files, threads, runs, input_shape, json_out):
    """Measure existing .pte/.tflite/.onnx files (and describe .mlpackage) on this host."""
    from ground.errors import UsageError
    from pipeline.profile import profile_file
    from pipeline.rundir import write_json

    _output_files(("--json", json_out))
    if threads < 1:
        raise UsageError(f"--threads {threads}: must be at least 1")
    shape = None
    if input_shape:
        try:
            shape = [int(s) for s in input_shape.lower().split("x")]
        except ValueError:
            raise UsageError(f"--input-shape {input_shape}: expected e.g. 1x3x32x32") from None
    results = [profile_file(f, threads, runs, input_shape=shape) for f in files]
    for r in results:
        lat = r["latency"]
        figure = (
            f"p50 {lat['p50']['value']:.4f} ms, p90 {lat['p90']['value']:.4f} ms "
            f"({lat['threads']} thread(s), {lat['runs']} runs, measured)"
            if lat
            else f"not run: {r['why_not_run']}"
        )
        click.echo(
            f"{r['file']}  [{r['backend']}, input {r['input_shape']}, "
            f"{r['bytes']['value']:,} bytes]  {figure}"
        )
    if json_out:
        write_json(json_out, results)


@cli.command()
def targets():
    """List targets and the backends each builds."""
    from targets import get_target, list_targets

    for name in list_targets():
        t = get_target(name)
        backends = ", ".join(f"{b.backend} ({b.precision})" for b in t.backends)
        click.echo(f"{name:14} {backends}  - {t.description}")


@cli.command()
def models():
    """List the model zoo."""
    from models import get_model_entry, list_models

    for name in list_models():
        click.echo(f"{name:18} {get_model_entry(name).description}")


if __name__ == "__main__":
    cli()
