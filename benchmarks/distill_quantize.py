"""What distillation, sparsity training and int8 buy, measured (issue 6).

    .venv/bin/python benchmarks/distill_quantize.py           # ~30-40 minutes on 2 cores
    .venv/bin/python benchmarks/distill_quantize.py --quick   # minutes

On real CIFAR-10 (../shared/data/cifar10), CIFAR ResNet-20, one fixed budget of epochs:

1. KD vs no KD: the dense teacher pruned to half its MACs (slimship's planner, L2, widths
   rounded to 8), then fine-tuned for the same epochs with Hinton's loss (T 4, alpha 0.7) or
   with cross-entropy alone.
2. Targeted dropout before pruning: teachers trained for the same epochs with none, with
   targeted dropout (Gomez et al.: p 0.5 on the lowest-L2 half of each layer's channels) and
   with untargeted channel dropout (p 0.25, the same expected number of dropped channels), each
   pruned the same way: accuracy right after pruning and after the same KD fine-tuning.
3. int8 vs fp32 per backend: the KD student exported fp32 and int8 to ExecuTorch (XNNPACK),
   TFLite (LiteRT) and ONNX Runtime through the project's backends, and ExecuTorch int8 by QAT;
   each file's accuracy on the test images (run through its runtime) and latency (1 thread,
   batch 1, interleaved rounds); Core ML: sizes of fp32/fp16/int8/palettized packages and their
   weight checks (prediction needs macOS).

Writes the section "## Distillation, sparsity training, quantization (issue 6)" of
benchmarks/RESULTS.md (--quick writes to --out only).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CIFAR,
    describe_env,
    environment,
    export,
    file_accuracy,
    interleaved,
    log,
    teacher,
    write_section,
)

from pipeline.config import DistillConfig, PruneConfig, TrainConfig
from pipeline.data import load_dataset
from pipeline.distill import kd_loss_fn
from pipeline.prune import count, prune_with_config
from pipeline.regularize import SparsityTraining
from pipeline.train import accuracy, cross_entropy, fit, predict

HEADING = "## Distillation, sparsity training, quantization (issue 6)"
SEED, CALIB, MODEL = 0, 256, "resnet20"
FULL = {
    "train": 6000,
    "teacher_epochs": 15,
    "epochs": 8,
    "qat_epochs": 1,
    "test": 1000,
    "rounds": 100,
    "warmup": 10,
}
QUICK = {
    "train": 500,
    "teacher_epochs": 1,
    "epochs": 1,
    "qat_epochs": 1,
    "test": 200,
    "rounds": 10,
    "warmup": 2,
}
FT = {"batch_size": 64, "lr": DistillConfig().lr}
DROPOUTS = {
    "none": TrainConfig(),
    "targeted dropout 0.5 (lowest 50 %)": TrainConfig(targeted_dropout=0.5, targeted_fraction=0.5),
    "channel dropout 0.25 (control)": TrainConfig(dropout=0.25),
}


def sparse_teacher(data, cfg, tc: TrainConfig, work: Path):
    """A teacher trained with the sparsity-training options of `tc` (cached like the rest)."""
    if tc == TrainConfig():
        return teacher(MODEL, data, cfg["teacher_epochs"], SEED, work / "teachers")[0]
    key = {"td": tc.targeted_dropout, "tf": tc.targeted_fraction, "do": tc.dropout}

    def make(model, x, y, epochs, **kw):
        st = SparsityTraining(model, torch.zeros(1, *data.input_shape), tc, SEED)
        try:
            fit(model, x, y, epochs=epochs, loss_fn=st.wrap(cross_entropy), **kw)
        finally:
            st.close()

    return _cached(data, cfg, work, key, make)


def _cached(data, cfg, work, key, train):
    from safetensors.torch import load_file, save_file

    from models import create_model

    c, h, _ = data.input_shape
    tag = "-".join(f"{k}{v}" for k, v in key.items())
    path = (
        work
        / "teachers"
        / f"{MODEL}-{len(data.y_train)}-e{cfg['teacher_epochs']}-{tag}.safetensors"
    )
    torch.manual_seed(SEED)
    model = create_model(MODEL, c, data.num_classes, h)
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    log(f"teacher with {tag}: training {cfg['teacher_epochs']} epochs")
    train(
        model,
        data.x_train,
        data.y_train,
        cfg["teacher_epochs"],
        batch_size=64,
        lr=0.003,
        weight_decay=5e-4,
        seed=SEED,
        desc=f"teacher {tag}",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.eval()


def prune_half(model, example, data):
    return prune_with_config(
        model, example, PruneConfig(macs_fraction=0.5), (data.x_train, data.y_train), 8
    ).model


def finetune(student, dense, data, epochs, kd: bool):
    d = DistillConfig()
    loss = (
        kd_loss_fn(dense, d.temperature, d.alpha)
        if kd
        else (lambda logits, y, _x: F.cross_entropy(logits, y))
    )
    fit(
        student,
        data.x_train,
        data.y_train,
        epochs=epochs,
        seed=SEED,
        desc="KD" if kd else "CE",
        loss_fn=loss,
        **FT,
    )
    return student.eval()


def run(cfg: dict, work: Path) -> dict:
    data = load_dataset(str(CIFAR), limit_train=cfg["train"])
    x_test, y_test = data.x_test[: cfg["test"]], data.y_test[: cfg["test"]]
    example = torch.zeros(1, *data.input_shape)
    acc = lambda m: accuracy(predict(m, x_test), y_test)
    out = {"data": data.summary(), "test_images": len(y_test), "config": cfg}

    # 1. KD vs no KD at equal epochs
    dense = sparse_teacher(data, cfg, TrainConfig(), work)
    pruned = prune_half(dense, example, data)
    out["teacher_accuracy"] = acc(dense)
    out["pruned_accuracy"] = acc(pruned)
    out["kd"] = {}
    students = {}
    for kd in (True, False):
        t0 = time.perf_counter()
        s = finetune(copy.deepcopy(pruned), dense, data, cfg["epochs"], kd)
        students[kd] = s
        out["kd"]["KD (T 4, alpha 0.7)" if kd else "cross-entropy only"] = {
            "accuracy": acc(s),
            "seconds": time.perf_counter() - t0,
        }
        log(f"{'KD' if kd else 'CE'} student: {acc(s):.2%}")

    # 2. sparsity training before pruning
    out["dropout"] = {}
    for label, tc in DROPOUTS.items():
        t = sparse_teacher(data, cfg, tc, work)
        p = prune_half(t, example, data)
        row = {"teacher": acc(t), "pruned": acc(p)}
        row["fine_tuned"] = acc(finetune(p, t, data, cfg["epochs"], True))
        out["dropout"][label] = row
        log(
            f"{label}: teacher {row['teacher']:.2%}, pruned {row['pruned']:.2%}, "
            f"fine-tuned {row['fine_tuned']:.2%}"
        )

    # 3. fp32 vs int8 per backend, for the KD student
    student = students[True]
    rng = np.random.default_rng(SEED)
    calib = data.x_train[np.sort(rng.choice(len(data.x_train), CALIB, replace=False))]
    files, runners = {}, {}

    def qat(prepared):
        d = DistillConfig()
        fit(
            prepared,
            data.x_train,
            data.y_train,
            epochs=cfg["qat_epochs"],
            batch_size=64,
            lr=2e-4,
            seed=SEED,
            desc="QAT",
            loss_fn=kd_loss_fn(dense, d.temperature, d.alpha),
        )

    cases = [
        (b, p, None) for b in ("executorch-xnnpack", "tflite", "onnx") for p in ("fp32", "int8")
    ]
    cases.append(("executorch-xnnpack", "int8", qat))
    for backend, precision, train in cases:
        label = f"{backend} {precision}" + (f" QAT {cfg['qat_epochs']} epoch" if train else "")
        exp, runner = export(
            backend,
            student,
            example,
            precision,
            calib if precision == "int8" else None,
            work / "files" / label.replace(" ", "_"),
            train=train,
        )
        files[label] = {
            "bytes": exp.path.stat().st_size,
            "accuracy": file_accuracy(runner, x_test, y_test),
            "backend": backend,
            "precision": precision,
        }
        runners[label] = runner
        log(f"{label}: {files[label]['accuracy']:.2%}, {files[label]['bytes']:,} B")
    lat = interleaved(runners, x_test[:1], cfg["rounds"], cfg["warmup"], SEED)
    for label, f in files.items():
        f["latency"] = lat[label]
        fp32 = files[f"{f['backend']} fp32"]
        f["speedup_vs_fp32"] = fp32["latency"]["median_ms"] / lat[label]["median_ms"]
        f["drop_points"] = (fp32["accuracy"] - f["accuracy"]) * 100
    out["files"] = files
    out["coreml"] = coreml_sizes(student, example, work / "coreml")
    out["student_macs"], _ = count(student, example)
    return out


def coreml_sizes(model, example, work: Path) -> dict:
    import targets
    from targets._base import ExportRequest
    from targets.coreml import _package_bytes

    out = {}
    for precision in ("fp32", "fp16", "int8", "palettize6", "palettize4"):
        folder = work / precision
        folder.mkdir(parents=True, exist_ok=True)
        exp = targets.get_backend("coreml").export(
            ExportRequest(model.eval(), example, precision, None, folder)
        )
        wc = exp.preflight["weights_check"]
        out[precision] = {
            "bytes": _package_bytes(exp.path),
            "weights_ok": wc["ok"],
            "max_weight_rel_diff": wc["max_weight_rel_diff"],
        }
    return out


def section(r: dict, env, minutes: float, quick: bool) -> str:
    cfg = r["config"]
    head = (
        f"{MODEL}, {r['data']}, first {r['test_images']} test images; teacher "
        f"{cfg['teacher_epochs']} epochs, students {cfg['epochs']} epochs (AdamW one-cycle, "
        f"lr {FT['lr']}, batch {FT['batch_size']}), seed {SEED}"
    )
    lines = [
        HEADING,
        "",
        (
            f"Written by `benchmarks/distill_quantize.py{' --quick' if quick else ''}` in one "
            f"run of {minutes:.0f} minutes on {describe_env(*env)}. Every row: {head}. "
            "Accuracies are measured on the test images (PyTorch for stages, the file through "
            "its own runtime for files)."
        ),
        "",
        "### Knowledge distillation at equal epochs",
        "",
        (
            f"Teacher {r['teacher_accuracy']:.2%}; pruned to 50 % of its MACs: "
            f"{r['pruned_accuracy']:.2%} before fine-tuning."
        ),
        "",
        "| fine-tuning | accuracy | wall s |",
        "|---|---|---|",
    ]
    for label, x in r["kd"].items():
        lines.append(f"| {label} | {x['accuracy']:.2%} | {x['seconds']:.0f} |")
    kd = list(r["kd"].values())
    gain = (kd[0]["accuracy"] - kd[1]["accuracy"]) * 100
    lines += [
        "",
        f"KD gain: {gain:+.2f} points (goal >= +1: {'met' if gain >= 1 else 'NOT met'}).",
        "",
        "### Sparsity training before pruning",
        "",
        (
            "| teacher trained with | teacher | pruned to 50 % MACs, before fine-tuning | after "
            f"{cfg['epochs']} KD epochs |"
        ),
        "|---|---|---|---|",
    ]
    for label, x in r["dropout"].items():
        lines.append(
            f"| {label} | {x['teacher']:.2%} | {x['pruned']:.2%} | {x['fine_tuned']:.2%} |"
        )
    lines += [
        "",
        "### int8 against fp32, per backend (the KD student)",
        "",
        "| file | accuracy | drop vs fp32 (points) | bytes | latency ms (IQR) | speed-up vs fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for label, f in r["files"].items():
        lat = f["latency"]
        lines.append(
            f"| {label} | {f['accuracy']:.2%} | {f['drop_points']:+.2f} | "
            f"{f['bytes']:,} | {lat['median_ms']:.3f} ({lat['q1_ms']:.3f}-"
            f"{lat['q3_ms']:.3f}) | {f['speedup_vs_fp32']:.2f}x |"
        )
    et = r["files"]["executorch-xnnpack int8"]
    ok = et["drop_points"] <= 1 and et["speedup_vs_fp32"] >= 1.3
    lines += [
        "",
        (
            f"ExecuTorch int8 (PTQ): drop {et['drop_points']:+.2f} points, speed-up "
            f"{et['speedup_vs_fp32']:.2f}x (goal: drop <= 1 point and >= 1.3x: "
            f"{'met' if ok else 'NOT met'})."
        ),
        "",
        (
            "Core ML (.mlpackage, weight compression; prediction needs macOS, so no accuracy "
            "or latency here; sizes counted, weights checked against the model):"
        ),
        "",
        "| scheme | bytes | weights check | max weight rel diff |",
        "|---|---|---|---|",
    ]
    for p, x in r["coreml"].items():
        lines.append(
            f"| {p} | {x['bytes']:,} | {'ok' if x['weights_ok'] else 'FAILED'} | "
            f"{x['max_weight_rel_diff']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/slimship-compare"))
    ap.add_argument("--out", type=Path, help="write the section here instead of RESULTS.md")
    args = ap.parse_args(argv)
    if not CIFAR.is_dir():
        print(f"error: real CIFAR-10 expected at {CIFAR} (see ../shared/data)", file=sys.stderr)
        return 2
    cfg = QUICK if args.quick else FULL
    torch.set_num_threads(1 if args.quick else 2)
    env0, t0 = environment(), time.perf_counter()
    r = run(cfg, args.work)
    text = section(r, (env0, environment()), (time.perf_counter() - t0) / 60, args.quick)
    (args.work / "distill_quantize.json").write_text(json.dumps(r, indent=1, default=str))
    print(text)
    if args.out:
        args.out.write_text(text)
    elif not args.quick:
        write_section(HEADING, text)
        log(f"wrote {HEADING!r} in benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
