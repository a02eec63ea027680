"""Calibration per stage, before and after temperature scaling (issue 12).

    .venv/bin/python benchmarks/calibration.py [--only digits|cifar10|cifar10-long]
                                               [--no-export] [--work DIR] [--no-write|--rewrite]
    .venv/bin/python benchmarks/calibration.py --compress [--only compress-...] [--work DIR]

For the default digits data (small_cnn, the recipe's default epochs) and a CIFAR-10 slice
(../shared/data/cifar10, resnet20, a few thousand training images, a few epochs) this runs a
small version of the pipeline's stages with the library functions: train the teacher, prune it
to 50 % of the MACs (pipeline.prune.prune_to_macs), fine-tune the pruned model by knowledge
distillation from the teacher (pipeline.distill.kd_loss_fn). For every stage it fits one
temperature on the held-out validation split (Dataset.x_val, never the test split) and measures
ECE (15 equal-width bins), NLL, Brier and accuracy on the test split before and after scaling.

Then the distilled student's T is folded into its classifier (pipeline.confidence
.fold_temperature) and the student is exported to ExecuTorch XNNPACK: fp32 with T folded
(its outputs compared with the PyTorch logits / T), and int8 without and with T folded; the
files are run over the test split and measured like the stages.

Runs digits and cifar10 by default; `--only cifar10-long` runs an over-fitting CIFAR-10
configuration (2,000 images, 12 epochs). Writes DIR/<run>.json, DIR/<run>-reliability.png and
the section "## Calibration (issue 12)" of benchmarks/RESULTS.md (that section only), which
lists every run whose JSON is in DIR (this invocation's and earlier ones').

`--compress` asks the product instead: `cli.py compress --target android` on digits (the
default recipe, which folds the fitted T, and with `calibrate.apply=fitted`, which folds it
only when cross-validation on the validation split agrees) and on the first 2,000 CIFAR-10 training
images (resnet20, 12 epochs, distilled 4: the over-fitting regime of cifar10-long), each in a
subprocess; per-stage ECE/NLL/Brier, the fitted and applied T, and each exported file's
calibration and parity are read from its report.json into the section "## Calibration through
`cli.py compress` (issue 12)" (about 10 minutes).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import RESULTS, write_section

from models import create_model
from pipeline import confidence as cal
from pipeline.config import DistillConfig, TrainConfig
from pipeline.data import load_dataset
from pipeline.distill import kd_loss_fn
from pipeline.prune import prune_to_macs
from pipeline.reliability_plot import reliability_png
from pipeline.sized_epochs import SIZED_EPOCHS
from pipeline.train import fit, predict

HEADING = "## Calibration (issue 12)"
CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
SEED = 0
CALIB_IMAGES = 256  # int8 calibration images, a seeded draw from the training split (as compress)

_train, _distill = TrainConfig(), DistillConfig()
RUNS = {
    "digits": {
        "data": "digits",
        "limit": None,
        "model": "small_cnn",
        "train": {
            "epochs": _train.epochs,
            "batch_size": _train.batch_size,
            "lr": _train.lr,
            "weight_decay": _train.weight_decay,
        },
        "distill": {
            "epochs": SIZED_EPOCHS["distill.epochs"][0],  # digits: the default's small-data value
            "batch_size": _distill.batch_size,
            "lr": _distill.lr,
            "temperature": _distill.temperature,
            "alpha": _distill.alpha,
        },
    },
    "cifar10": {
        "data": str(CIFAR),
        "limit": 4000,
        "model": "resnet20",
        "train": {"epochs": 5, "batch_size": 64, "lr": 0.003, "weight_decay": 5e-4},
        "distill": {
            "epochs": 3,
            "batch_size": 64,
            "lr": 0.002,
            "temperature": _distill.temperature,
            "alpha": _distill.alpha,
        },
    },
    # opt-in (--only cifar10-long): fewer images, more epochs, so the teacher over-fits and is
    # over-confident, the regime Guo et al. describe
    "cifar10-long": {
        "data": str(CIFAR),
        "limit": 2000,
        "model": "resnet20",
        "train": {"epochs": 12, "batch_size": 64, "lr": 0.003, "weight_decay": 5e-4},
        "distill": {
            "epochs": 4,
            "batch_size": 64,
            "lr": 0.002,
            "temperature": _distill.temperature,
            "alpha": _distill.alpha,
        },
    },
}
DEFAULT_KEYS = ("digits", "cifar10")

# `--compress`: the same questions asked of the product, `cli.py compress --target android`,
# read back from its report.json: the default run (T folded), the default with the CV gate, and a
# CIFAR-10 run in the over-fitting regime of cifar10-long (train.npz cut to its first images)
HEADING_COMPRESS = "## Calibration through `cli.py compress` (issue 12)"
COMPRESS_RUNS = {
    "compress-digits": {"data": "digits", "model": "small_cnn", "limit": None, "args": []},
    "compress-digits-cv-gated": {
        "data": "digits",
        "model": "small_cnn",
        "limit": None,
        "args": ["--set", "calibrate.apply=fitted"],
    },
    "compress-cifar10": {
        "data": "cifar10",
        "model": "resnet20",
        "limit": 2000,
        "args": ["--epochs", "12", "--distill-epochs", "4"],
    },
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(key: str, work: Path, export: bool) -> dict:
    cfg = RUNS[key]
    t0 = time.perf_counter()
    d = load_dataset(cfg["data"], limit_train=cfg["limit"])
    log(d.summary())
    c, h, _ = d.input_shape
    example = torch.zeros(1, *d.input_shape)
    torch.manual_seed(SEED)
    teacher = create_model(cfg["model"], c, d.num_classes, h)
    tr = cfg["train"]
    fit(
        teacher,
        d.x_train,
        d.y_train,
        epochs=tr["epochs"],
        batch_size=tr["batch_size"],
        lr=tr["lr"],
        weight_decay=tr["weight_decay"],
        seed=SEED,
        desc="teacher",
    )
    log(f"{key}: teacher trained ({time.perf_counter() - t0:.0f} s)")
    pruned = prune_to_macs(teacher, example, 0.5, data=(d.x_train, d.y_train)).model
    student = copy.deepcopy(pruned)
    ds = cfg["distill"]
    fit(
        student,
        d.x_train,
        d.y_train,
        epochs=ds["epochs"],
        batch_size=ds["batch_size"],
        lr=ds["lr"],
        seed=SEED,
        desc="distill",
        loss_fn=kd_loss_fn(copy.deepcopy(teacher), ds["temperature"], ds["alpha"]),
    )
    log(f"{key}: pruned and distilled ({time.perf_counter() - t0:.0f} s)")

    stages, logits = {}, {}
    for name, m in (("teacher", teacher), ("pruned", pruned), ("distilled", student)):
        lv, lt = predict(m, d.x_val), predict(m, d.x_test)
        logits[name] = (lv, lt)
        stages[name] = cal.evaluate(lv, d.y_val, lt, d.y_test)
        _say(key, name, stages[name])

    files = {}
    if export:
        files = export_rows(
            key,
            d,
            student,
            stages["distilled"]["temperature"],
            example,
            logits["distilled"][1],
            work,
        )
    out = {
        "data": d.summary(),
        "model": cfg["model"],
        "train": tr,
        "distill": ds,
        "prune": {"macs_fraction": 0.5, "importance": "l2", "round_to": 8},
        "seed": SEED,
        "stages": stages,
        "files": files,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / f"{key}.json").write_text(json.dumps(out, indent=1))
    png = reliability_png(
        {**stages, **{k: v for k, v in files.items() if "before" in v}},
        title=f"{d.summary()} ({cfg['model']}): test split, T fitted on val",
    )
    (work / f"{key}-reliability.png").write_bytes(png)
    log(f"{key}: done in {out['seconds']} s; wrote {work / (key + '.json')}")
    return out


def export_rows(key, d, student, t, example, torch_test_logits, work: Path) -> dict:
    from targets import get_backend
    from targets._base import ExportRequest, run_all

    b = get_backend("executorch-xnnpack")
    rng = np.random.default_rng(SEED)
    calib = d.x_train[
        np.sort(rng.choice(len(d.x_train), min(CALIB_IMAGES, len(d.x_train)), replace=False))
    ]
    folded = cal.fold_temperature(student, t, example)
    rows = {}

    def file_outputs(model, precision, tag):
        out_dir = work / key / tag
        out_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        exp = b.export(
            ExportRequest(
                copy.deepcopy(model),
                example,
                precision,
                calib if precision == "int8" else None,
                out_dir,
            )
        )
        runner = b.load(exp.path)
        val, test = run_all(runner, d.x_val), run_all(runner, d.x_test)
        log(f"{key}: {tag} exported and run ({time.perf_counter() - start:.0f} s)")
        return val, test

    # fp32 file of the folded student: does the file emit the scaled logits?
    _, test32 = file_outputs(folded, "fp32", "fp32-folded")
    scaled = torch_test_logits.astype(np.float64) / t
    diff = float(np.abs(test32 - scaled).max())
    rows["fp32 .pte, T folded"] = {
        "temperature": t,
        "after": cal.metrics(test32, d.y_test),
        "parity_vs_torch_logits_over_T": {
            "max_abs_diff": diff,
            "max_abs_rel": diff / float(np.abs(scaled).max()),
        },
    }
    _say(key, "fp32 .pte, T folded", rows["fp32 .pte, T folded"])
    # int8 files: the student as exported without T, and with T folded before quantization
    val8, test8 = file_outputs(student, "int8", "int8")
    _, test8f = file_outputs(folded, "int8", "int8-folded")
    rows["int8 .pte"] = {
        "temperature": t,
        "before": cal.metrics(test8, d.y_test),
        "after": cal.metrics(test8f, d.y_test),
        "refit_on_file": cal.evaluate(val8, d.y_val, test8, d.y_test),
    }
    _say(key, "int8 .pte", rows["int8 .pte"])
    return rows


def _say(key, name, r):
    b, a = r.get("before"), r["after"]
    log(
        f"{key} {name}: T={r['temperature']:.3f}"
        + (
            f" ECE {b['ece']:.4f} -> {a['ece']:.4f}, NLL {b['nll']:.4f} -> {a['nll']:.4f}"
            if b
            else f" ECE {a['ece']:.4f} NLL {a['nll']:.4f}"
        )
        + f", acc {a['accuracy']:.4f}"
    )


def section(results: dict) -> str:
    lines = [
        HEADING,
        "",
        (
            f"`benchmarks/calibration.py`, {time.strftime('%Y-%m-%d')}, host "
            f"{platform.machine()} ({platform.processor() or 'cpu'}), torch {torch.__version__}, "
            f"1 thread, seed {SEED}."
        ),
        "",
        (
            "Every number below is **measured** on the test split (never used for fitting). "
            "ECE: 15 equal-width confidence bins over the max softmax probability, weighted by "
            "bin count. NLL: mean -log p(label), nats. Brier: mean over images of the sum over "
            "classes of (p - onehot)^2 (range 0..2). T: one temperature per stage, fitted by "
            "minimising NLL on the validation split held out from training "
            "(`pipeline.confidence.fit_temperature`); scaling does not change accuracy. "
            "`pruned` is the pruned model before fine-tuning. File rows: the distilled "
            "student exported to ExecuTorch XNNPACK and run through the ExecuTorch runtime; "
            "'before' is the file exported without T, 'after' the file exported with the "
            "student's T folded into its classifier (W/T, b/T). NLL change: mean over test "
            "images of the per-image change of -log p(label) from scaling, ± its standard "
            "error. CV on val: 5-fold cross-validation inside the validation split, NLL of "
            "each held-out fold with T fitted on the other four, unscaled → scaled (a "
            "diagnostic; T is always the fit on the whole validation split)."
        ),
        "",
    ]
    for key, r in results.items():
        tr, ds = r["train"], r["distill"]
        lines += [
            f"### {key}, {r['model']}: {r['data'].split(': ', 1)[-1]}",
            "",
            (
                f"Teacher: {tr['epochs']} epochs (batch {tr['batch_size']}, lr {tr['lr']}, "
                f"AdamW + one-cycle). Pruned to 50 % of the MACs (l2, round_to 8). Distilled: "
                f"{ds['epochs']} epochs, KD T={ds['temperature']}, alpha={ds['alpha']}. "
                f"Seed {r['seed']}; {r['seconds']:.0f} s in all."
            ),
            "",
            (
                "| data | stage | T | ECE before | ECE after | NLL before | NLL after | "
                "NLL change ± SE | CV on val: T helps? | Brier before | Brier after | accuracy |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        rows = {**r["stages"], **r["files"]}
        for name, x in rows.items():
            b, a = x.get("before"), x["after"]
            f = lambda m, k, p=4: f"{m[k]:.{p}f}" if m else "–"
            note = ""
            if not x.get("fit", {}).get("identifiable", True):
                note = " (T not identifiable: val all correct)"
            ch = x.get("nll_change")
            change = f"{ch['mean']:+.4f} ± {ch['standard_error']:.4f}" if ch else "–"
            cv = x.get("fit", {}).get("cv")
            helps = (
                ("yes" if cv["scaling_helps"] else "no")
                + f" ({cv['nll_unscaled']:.4f} → {cv['nll_scaled']:.4f})"
                if cv
                else "–"
            )
            lines.append(
                f"| {key} | {name}{note} | {x['temperature']:.3f} | {f(b, 'ece')} | "
                f"{f(a, 'ece')} | {f(b, 'nll')} | {f(a, 'nll')} | {change} | {helps} | "
                f"{f(b, 'brier')} | {f(a, 'brier')} | {a['accuracy']:.2%} |"
            )
        for name, x in r["files"].items():
            if "parity_vs_torch_logits_over_T" in x:
                p = x["parity_vs_torch_logits_over_T"]
                lines += [
                    "",
                    (
                        f"{name}: max |file - PyTorch logits / T| = {p['max_abs_diff']:.2e} "
                        f"({p['max_abs_rel']:.2e} of the largest logit), over "
                        f"{x['after']['count']} test images (fp32 parity tolerance 1e-4 "
                        "relative)."
                    ),
                ]
            if "refit_on_file" in x:
                rf = x["refit_on_file"]
                lines += [
                    "",
                    (
                        f"{name}: T refitted on the int8 file's own validation outputs = "
                        f"{rf['temperature']:.3f} (vs {x['temperature']:.3f} from the fp32 "
                        f"student); with it, test ECE {rf['after']['ece']:.4f}, NLL "
                        f"{rf['after']['nll']:.4f}."
                    ),
                ]
        lower = [n for n, x in r["stages"].items() if x["after"]["nll"] < x["before"]["nll"]]
        higher = [n for n in r["stages"] if n not in lower]
        cv_no = [
            n
            for n, x in r["stages"].items()
            if "cv" in x["fit"] and not x["fit"]["cv"]["scaling_helps"]
        ]
        lines += [
            "",
            (
                f"Reading: temperature scaling lowered test NLL for "
                f"{', '.join(lower) or 'no stage'}; it did not for "
                f"{', '.join(higher) or 'no stage'}. Cross-validation inside the "
                f"validation split flagged {', '.join(cv_no) or 'no stage'} as not helped."
            ),
        ]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def run_compress(key: str, work: Path) -> dict:
    """`cli.py compress --target android` in a subprocess; the figures from its report.json."""
    import subprocess

    cfg = COMPRESS_RUNS[key]
    root = work / key
    data = cfg["data"]
    if data == "cifar10":  # the first `limit` training images, the whole test file
        data = root / "cifar10"
        data.mkdir(parents=True, exist_ok=True)
        with np.load(CIFAR / "train.npz") as d:
            np.savez_compressed(
                data / "train.npz", x=d["x"][: cfg["limit"]], y=d["y"][: cfg["limit"]]
            )
        with np.load(CIFAR / "test.npz") as d:
            np.savez_compressed(data / "test.npz", x=d["x"], y=d["y"])
    cmd = [
        sys.executable,
        str(ROOT / "cli.py"),
        "compress",
        "--target",
        "android",
        "--model",
        cfg["model"],
        "--data",
        str(data),
        "--seed",
        str(SEED),
        "--out",
        str(root / "dist"),
        "--run-dir",
        str(root / "run"),
        *cfg["args"],
    ]
    log(f"{key}: {' '.join(cmd[1:])}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    (root / "compress.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(
            f"{key}: compress exited {proc.returncode}; log in {root / 'compress.log'}"
        )
    report = json.loads((root / "dist" / "android" / "report.json").read_text())
    st = report["stages"]
    value = lambda f: f["value"] if f else None
    keep = ("ece", "nll", "brier", "accuracy")
    out = {
        "command": "cli.py " + " ".join(cmd[2:]).replace(str(work), "WORK"),
        "data": "{}: {} train / {} val / {} test".format(
            report["data"]["name"], *(report["data"][k]["value"] for k in ("train", "val", "test"))
        ),
        "model": cfg["model"],
        "seconds": round(time.perf_counter() - t0, 1),
        "stages": {
            n: {k: value(st[n]["calibration"].get(k)) for k in keep}
            for n in ("teacher", "pruned", "distilled")
        },
        "temperature": _temperature(st["temperature"]),
        "nll_change": st["temperature"].get("nll_change"),
        "distilled_scaled": {k: value(st["temperature"]["after_fitted"].get(k)) for k in keep},
        "files": {},
    }
    for name, b in report["backends"].items():
        if "error" in b or "parity" not in b:
            out["files"][name] = {"failed": b.get("error", "no parity block")}
            continue
        p, m = b["parity"], b.get("calibration_metrics") or {}
        out["files"][name] = {
            "file": b.get("file"),
            "precision": b.get("precision"),
            "parity": p["state"],
            "tolerance": p["tolerance"],
            "max_abs_diff_rel": value(p["test_split"]["max_abs_diff_rel"]),
            "sqnr_db": value(p["test_split"].get("sqnr_db")),
            **{k: value(m.get(k)) for k in keep},
        }
    (work / f"{key}.json").write_text(json.dumps(out, indent=1))
    log(
        f"{key}: done in {out['seconds']} s; T fitted {out['temperature']['temperature_fitted']:.3f}, "
        f"applied {out['temperature']['temperature_applied']:.3f}"
    )
    return out


def _temperature(t: dict) -> dict:
    """The report's temperature figures as the plain numbers this file's results keep."""
    cv = t.get("cross_validation")
    return {
        "temperature_fitted": t["temperature_fitted"]["value"],
        "temperature_applied": t["temperature_applied"]["value"],
        "folded": t["folded"],
        "decision": t["decision"],
        "cross_validation": {
            "folds": cv["settings"]["folds"],
            **{k: cv[k]["value"] for k in ("temperatures", "nll_scaled", "nll_unscaled")},
            "scaling_helps": cv["scaling_helps"],
        }
        if cv
        else None,
    }


def compress_section(results: dict) -> str:
    f = lambda v, p=4: "–" if v is None else f"{v:.{p}f}"
    intro = (
        f"`benchmarks/calibration.py --compress`, {time.strftime('%Y-%m-%d')}, host "
        f"{platform.machine()} ({platform.processor() or 'cpu'}), torch {torch.__version__}, "
        f"seed {SEED}. Every figure is read from the run's `report.json`, where each is "
        "labelled `measured` (test split; T fitted on the validation split). Stage rows: "
        "the PyTorch model after that stage, unscaled. `distilled, scaled by fitted T`: the "
        "distilled student's logits divided by the fitted T (what the default, `apply: always`, ships). "
        "File rows: the exported file run through its runtime over the test split; it "
        "carries the applied T (folded into the classifier), and its parity is against its "
        "PyTorch reference, the T-folded (and for int8, quantized) student."
    )
    lines = [HEADING_COMPRESS, "", intro, ""]
    for key, r in results.items():
        t = r["temperature"]
        cv = t.get("cross_validation")
        lines += [
            f"### {key}: {r['model']}, {r['data']}",
            "",
            f"`{r['command']}` ({r['seconds']:.0f} s).",
            "",
            f"Temperature: fitted {t['temperature_fitted']:.3f}, applied "
            f"{t['temperature_applied']:.3f} ({t['decision']})"
            + (
                f"; 5-fold CV inside the validation split: NLL {cv['nll_unscaled']:.4f} "
                f"unscaled, {cv['nll_scaled']:.4f} scaled"
                if cv
                else ""
            )
            + ".",
            "",
            "| stage / file | ECE | NLL | Brier | accuracy | parity vs the scaled model |",
            "|---|---|---|---|---|---|",
        ]
        rows = [(n, m, "") for n, m in r["stages"].items()]
        rows.append(("distilled, scaled by fitted T", r["distilled_scaled"], ""))
        for name, x in r["files"].items():
            if "failed" in x:
                lines.append(f"| {name} | failed: {x['failed']} | | | | |")
                continue
            par = f"{x['parity']}, max rel diff {x['max_abs_diff_rel']:.2e}" + (
                f", SQNR {x['sqnr_db']:.1f} dB" if x.get("sqnr_db") else ""
            )
            rows.append((f"{x['file']} ({x['precision']})", x, par))
        for n, m, par in rows:
            lines.append(
                f"| {n} | {f(m['ece'])} | {f(m['nll'])} | {f(m['brier'])} | "
                f"{m['accuracy']:.2%} | {par or '–'} |"
            )
        u, s_ = r["stages"]["distilled"]["nll"], r["distilled_scaled"]["nll"]
        ch = r.get("nll_change") or {}
        se = ch.get("standard_error")
        noise = ""
        if se:
            noise = (
                f", a change of {ch['value']:+.4f} ± {se:.4f} (1 standard error over the test "
                "images): "
                + (
                    "more than 2 standard errors from zero"
                    if abs(ch["value"]) > 2 * se
                    else "within 2 standard errors of zero, i.e. not told apart "
                    "from no change by this test split"
                )
            )
        lines += [
            "",
            f"Reading: the fitted T {'lowered' if s_ < u else 'did not lower'} the "
            f"distilled student's test NLL ({u:.4f} → {s_:.4f}{noise}); the bundle "
            + ("ships it folded." if t["folded"] else "ships T = 1 (not folded)."),
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--only", choices=sorted(RUNS) + sorted(COMPRESS_RUNS), help="run only this configuration"
    )
    ap.add_argument(
        "--compress",
        action="store_true",
        help="run cli.py compress (digits default, digits with the CV gate, "
        "CIFAR-10) and write its own section from the reports",
    )
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/slimship-calibration"))
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    ap.add_argument(
        "--rewrite",
        action="store_true",
        help="run nothing: rebuild the RESULTS.md section from the JSON in --work",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.compress or (args.only or "").startswith("compress-"):
        runs, default, heading, build = (
            COMPRESS_RUNS,
            list(COMPRESS_RUNS),
            HEADING_COMPRESS,
            compress_section,
        )
        runner = lambda k: run_compress(k, args.work)
    else:
        runs, default, heading, build = RUNS, list(DEFAULT_KEYS), HEADING, section
        runner = lambda k: run(k, args.work, not args.no_export)
    args.work.mkdir(parents=True, exist_ok=True)
    keys = [] if args.rewrite else [args.only] if args.only else default
    fresh = {k: runner(k) for k in keys}
    # the section lists every run with results in --work: this one's, and earlier ones' JSON
    results = {
        k: fresh[k] if k in fresh else json.loads((args.work / f"{k}.json").read_text())
        for k in runs
        if k in fresh or (args.work / f"{k}.json").is_file()
    }
    text = build(results)
    print(text)
    if not args.no_write:
        write_section(heading, text)
        log(f"wrote {heading!r} in {RESULTS}")


if __name__ == "__main__":
    main()
