"""Is slimship's recipe better than what users do today? (issue 10)

    .venv/bin/python benchmarks/compare_recipes.py           # ~1 hour on 2 cores
    .venv/bin/python benchmarks/compare_recipes.py --quick   # minutes (tests/test_benchmarks)

On real CIFAR-10 (../shared/data/cifar10), for a CIFAR ResNet-20 and MobileNetV2 x0.5: one dense
teacher per model, then five contenders, each at the same 2.5x MAC reduction and with the same
budget of epochs after the teacher (AdamW, one-cycle, lr 0.002, batch 64, seed fixed):

1. common: torch-pruning one-shot L2 magnitude pruning as in its own examples (MetaPruner,
   GroupMagnitudeImportance(p=2), one uniform ratio bisected to the MAC target, classifier
   ignored, no rounding), then cross-entropy fine-tuning;
2. slimship: what `compress` does by default: the per-layer width planner to the MAC target,
   L2 importance, widths rounded to 8 (XNNPACK), knowledge distillation from the teacher
   (T 4, alpha 0.7);
3. scratch: slimship's pruned architecture re-initialised and trained from scratch with
   cross-entropy (Liu et al., "Rethinking the value of network pruning"), same epochs;
4. rewind: slimship's pruned architecture with its surviving weights reset to their values at
   initialisation (Frankle & Carbin's lottery ticket), retrained with cross-entropy;
5. unstructured: global magnitude pruning of single weights at the sparsity that removes as many
   weights as slimship's channel pruning did, masks held while fine-tuning with cross-entropy.

Every contender is exported to an int8 .pte through the project's backend (PT2E,
XNNPACKQuantizer, 256 calibration images from the training split); the table shows the file's
test accuracy (run through executorch.runtime), MACs, parameters, file size, latency (1 thread,
batch 1, interleaved rounds: median with quartiles) and its speed-up over the dense teacher's
int8 .pte divided by the MAC reduction, and the recipe's wall time (pruning + fine-tuning).

Then the pipeline itself: the wall time of `cli.py compress --target android` on its default
(digits), and the time of its export + verify + profile stages against the bare library calls
those stages make (timed here on the same student, written out call by call).

Writes the section "## Recipes against the peers (issue 10)" of benchmarks/RESULTS.md
(--quick writes to --out only, so that the committed table comes from a full run).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CIFAR,
    ROOT,
    describe_env,
    environment,
    export,
    file_accuracy,
    interleaved,
    log,
    teacher,
    write_section,
)

from pipeline.checkpoint import build_model
from pipeline.config import DistillConfig, PruneConfig
from pipeline.data import load_dataset
from pipeline.distill import kd_loss_fn
from pipeline.prune import (
    count,
    prune_unstructured,
    prune_with_config,
    remove_masks,
    rewind,
)
from pipeline.train import accuracy, fit, predict

HEADING = "## Recipes against the peers (issue 10)"
KEEP = 0.4  # 2.5x MAC reduction
SEED = 0
CALIB = 256
FULL = {
    "models": {
        "resnet20": {"train": 6000, "teacher_epochs": 15, "epochs": 8},
        "mobilenetv2": {"train": 3000, "teacher_epochs": 10, "epochs": 6},
    },
    "test": 1000,
    "rounds": 100,
    "warmup": 10,
}
QUICK = {
    "models": {"resnet20": {"train": 500, "teacher_epochs": 1, "epochs": 1}},
    "test": 200,
    "rounds": 10,
    "warmup": 2,
}
FT = {"batch_size": 64, "lr": DistillConfig().lr}  # every contender's fine-tuning


def ce(logits, y, _x):
    return F.cross_entropy(logits, y)


def classifier(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]


def prune_common(dense, example):
    """torch-pruning's example recipe: one uniform ratio, L2 group magnitude, bisected so the
    counted MACs land at (not above) the target."""
    macs0, _ = count(dense, example)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(14):
        r = (lo + hi) / 2
        m = copy.deepcopy(dense)
        tp.pruner.MetaPruner(
            m,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=r,
            ignored_layers=[classifier(m)],
        ).step()
        macs = count(m, example)[0]
        if macs <= KEEP * macs0:
            hi, best = r, m
        else:
            lo = r
    return best


def contenders(name, dense, init, data, epochs, spec):
    """{contender: (model, seconds, notes)} at the same MAC target and epoch budget."""
    example = torch.zeros(1, *spec["input_shape"])
    kd = kd_loss_fn(dense, DistillConfig().temperature, DistillConfig().alpha)
    train = (data.x_train, data.y_train)
    out = {}

    def tune(model, loss, tag):
        fit(model, *train, epochs=epochs, seed=SEED, desc=f"{name} {tag}", loss_fn=loss, **FT)
        return model.eval()

    t0 = time.perf_counter()
    m = tune(prune_common(dense, example), ce, "common")
    out["common"] = (m, time.perf_counter() - t0, "tp MetaPruner, uniform ratio, CE")

    t0 = time.perf_counter()
    res = prune_with_config(dense, example, PruneConfig(macs_fraction=KEEP), train, 8)
    pruned, plan = copy.deepcopy(res.model), res.plan
    out["slimship"] = (
        tune(res.model, kd, "slimship"),
        time.perf_counter() - t0,
        "planner, round_to 8, KD T=4 alpha=0.7",
    )

    t0 = time.perf_counter()
    torch.manual_seed(SEED + 1)
    m = build_model(spec, plan)  # the pruned shapes, fresh initialisation
    out["scratch"] = (tune(m, ce, "scratch"), time.perf_counter() - t0, "slimship's shape, CE")

    t0 = time.perf_counter()
    m = rewind(pruned, plan, init, spec)
    out["rewind"] = (
        tune(m, ce, "rewind"),
        time.perf_counter() - t0,
        "slimship's shape, survivors at init, CE",
    )

    t0 = time.perf_counter()
    removed = res.params_before - res.params_after
    weights = sum(
        mod.weight.numel()
        for mod in dense.modules()
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))
    )
    sparsity = removed / weights
    m, _ = prune_unstructured(dense, sparsity, remove=False)
    m = remove_masks(tune(m, ce, "unstructured"))
    out["unstructured"] = (
        m,
        time.perf_counter() - t0,
        f"{sparsity:.1%} of conv/linear weights zeroed, CE",
    )
    return out


def nonzero(model) -> int:
    return int(sum((p != 0).sum() for p in model.parameters()))


def bench_model(name: str, cfg: dict, run: dict, work: Path) -> dict:
    data = load_dataset(str(CIFAR), limit_train=cfg["train"])
    x_test, y_test = data.x_test[: run["test"]], data.y_test[: run["test"]]
    c, h, w = data.input_shape
    spec = {
        "name": name,
        "in_channels": c,
        "num_classes": data.num_classes,
        "input_size": h,
        "input_shape": [c, h, w],
    }
    torch.manual_seed(SEED)
    dense, init, t_seconds = teacher(name, data, cfg["teacher_epochs"], SEED, work / "teachers")
    example = torch.zeros(1, c, h, w)
    macs0, params0 = count(dense, example)
    rng = np.random.default_rng(SEED)
    calib = data.x_train[np.sort(rng.choice(len(data.x_train), CALIB, replace=False))]
    rows, runners = {}, {}
    models = {"dense teacher": (dense, t_seconds, f"{cfg['teacher_epochs']} epochs")}
    models.update(contenders(name, dense, init, data, cfg["epochs"], spec))
    for label, (model, seconds, notes) in models.items():
        exp, runner = export(
            "executorch-xnnpack",
            model,
            example,
            "int8",
            calib,
            work / name / label.replace(" ", "_"),
        )
        macs, params = count(model, example)
        rows[label] = {
            "notes": notes,
            "seconds": seconds,
            "macs": macs,
            "params": params,
            "nonzero_params": nonzero(model),
            "bytes": exp.path.stat().st_size,
            "torch_accuracy": accuracy(predict(model, x_test), y_test),
            "pte_accuracy": file_accuracy(runner, x_test, y_test),
        }
        runners[label] = runner
        log(
            f"{name} {label}: .pte accuracy {rows[label]['pte_accuracy']:.2%}, "
            f"MACs {macs / macs0:.0%}"
        )
    lat = interleaved(runners, x_test[:1], run["rounds"], run["warmup"], SEED)
    base = lat["dense teacher"]["median_ms"]
    for label, r in rows.items():
        r["latency"] = lat[label]
        r["mac_reduction"] = macs0 / r["macs"]
        r["speedup"] = base / lat[label]["median_ms"]
        r["speedup_per_mac_reduction"] = r["speedup"] / r["mac_reduction"]
    return {
        "model": name,
        "config": cfg,
        "data": data.summary(),
        "test_images": len(y_test),
        "macs0": macs0,
        "params0": params0,
        "rows": rows,
    }


# ---------------------------------------------------------------------------------------------
# the pipeline's own cost: compress wall time, stages vs the bare library calls they make


def compress_run(work: Path, quick: bool) -> dict:
    out, run_dir = work / "compress-dist", work / "compress-run"
    for p in (out, run_dir):
        subprocess.run(["rm", "-rf", str(p)], check=True)
    cmd = [
        sys.executable,
        "cli.py",
        "compress",
        "--target",
        "android",
        "--out",
        str(out),
        "--run-dir",
        str(run_dir),
    ] + (["--epochs", "3", "--distill-epochs", "2"] if quick else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"compress failed: {proc.stderr.strip().splitlines()[-1:]}")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stages = {k: v["seconds"] for k, v in manifest["stages"].items()}
    return {"command": " ".join(cmd[1:]), "wall_s": wall, "stages": stages, "run_dir": run_dir}


def bare_executorch(model, example, calib, x_test, x_rand, folder: Path, warmup, runs) -> dict:
    """What the export, verify and profile stages of executorch-xnnpack do, as library calls
    (imports inside the timing: a fresh process pays them, as compress's first export does)."""
    t, s = {}, time.perf_counter()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.devtools import Inspector
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), q)
    with torch.no_grad():
        for i in range(len(calib)):
            prepared(torch.from_numpy(calib[i : i + 1]))
    ref = convert_pt2e(prepared)
    edge = to_edge_transform_and_lower(
        torch.export.export(copy.deepcopy(ref), (example,)), partitioner=[XnnpackPartitioner()]
    )
    get_delegation_info(edge.exported_program().graph_module)  # the preflight's op list
    path = folder / "bare.pte"
    edge.to_executorch().save(str(path))
    with torch.no_grad():
        for x in (x_test, x_rand):
            torch.cat([ref(torch.from_numpy(x[i : i + 1])) for i in range(len(x))])
    t["export"] = time.perf_counter() - s
    s = time.perf_counter()
    method = Runtime.get().load_program(path).load_method("forward")
    for x in (x_test, x_rand):
        [method.execute([torch.from_numpy(x[i : i + 1].copy())]) for i in range(len(x))]
    t["verify"] = time.perf_counter() - s
    s = time.perf_counter()
    _unsafe_reset_threadpool(1)
    method = Runtime.get().load_program(path).load_method("forward")
    x1 = torch.from_numpy(x_test[:1].copy())
    for _ in range(1 + warmup + runs):
        method.execute([x1])
    _fresh_process_run(path, "executorch")
    from executorch.exir._serialize._program import deserialize_pte_binary

    deserialize_pte_binary(path.read_bytes())  # the memory plan's buffer sizes
    with tempfile.TemporaryDirectory() as tmp:
        prog = Runtime.get().load_program(path, enable_etdump=True, debug_buffer_size=0)
        m = prog.load_method("forward")
        for _ in range(23):
            m.execute([x1])
        prog.write_etdump_result_to_file(f"{tmp}/run.etdp", f"{tmp}/debug.bin")
        Inspector(etdump_path=f"{tmp}/run.etdp")
    t["profile"] = time.perf_counter() - s
    return t


def bare_tflite(model, example, calib, x_test, x_rand, folder: Path, warmup, runs) -> dict:
    """What the export, verify and profile stages of tflite do, as library calls."""
    t, s = {}, time.perf_counter()
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    q = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    )
    prepared = prepare_pt2e(torch.export.export(model, (example,), strict=True).module(), q)
    with torch.no_grad():
        for i in range(len(calib)):
            prepared(torch.from_numpy(calib[i : i + 1]))
    ref = convert_pt2e(prepared, fold_quantize=False)
    move_exported_model_to_eval(ref)
    path = folder / "bare.tflite"
    litert_torch.convert(ref, (example,), quant_config=QuantConfig(pt2e_quantizer=q)).export(
        str(path)
    )
    probe = Interpreter(model_path=str(path), num_threads=1)  # the preflight: ops, delegation
    probe._get_ops_details()
    probe.allocate_tensors()
    probe._get_ops_details()
    with torch.no_grad():
        for x in (x_test, x_rand):
            torch.cat([ref(torch.from_numpy(x[i : i + 1])) for i in range(len(x))])
    t["export"] = time.perf_counter() - s

    def runner(threads=None):
        interp = Interpreter(model_path=str(path), num_threads=threads)
        sig = interp.get_signature_runner()
        ((iname, idet),) = sig.get_input_details().items()
        ((oname, odet),) = sig.get_output_details().items()
        (si, zi), (so, zo) = idet["quantization"], odet["quantization"]

        def run(x):
            xi = np.clip(np.round(x / si) + zi, -128, 127).astype(np.int8)
            return (sig(**{iname: xi})[oname].astype(np.float32) - zo) * so

        return run

    s = time.perf_counter()
    run = runner()
    for x in (x_test, x_rand):
        [run(x[i : i + 1]) for i in range(len(x))]
    t["verify"] = time.perf_counter() - s
    s = time.perf_counter()
    run = runner(1)
    for _ in range(1 + warmup + runs):
        run(x_test[:1])
    _fresh_process_run(path, "tflite")
    t["profile"] = time.perf_counter() - s
    return t


_FRESH = {
    "executorch": (
        "import torch; from executorch.runtime import Runtime; "
        "m = Runtime.get().load_program({p!r}).load_method('forward'); "
        "m.execute([torch.zeros({shape})]); open('/proc/self/status').read()"
    ),
    "tflite": (
        "import numpy as np; from ai_edge_litert.interpreter import Interpreter; "
        "i = Interpreter(model_path={p!r}); s = i.get_signature_runner(); "
        "(n, d), = s.get_input_details().items(); "
        "s(**{{n: np.zeros(d['shape'], np.int8)}}); open('/proc/self/status').read()"
    ),
}


def _fresh_process_run(path: Path, kind: str) -> None:
    """Peak RSS needs a fresh process that imports the runtime, loads and runs the file."""
    code = _FRESH[kind].format(p=str(path), shape="1, 1, 8, 8")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)


def overhead(work: Path, quick: bool) -> dict:
    """compress and the bare calls, `reps` times each, alternating (timed: medians with range)."""
    reps = 1 if quick else 3
    comps, bare_runs = [], []
    for rep in range(reps):
        comp = compress_run(work, quick)
        run_dir = comp.pop("run_dir")
        # the bare calls in a fresh process, as compress ran its stages in one
        proc = subprocess.run(
            [sys.executable, __file__, "--bare", str(run_dir), "--work", str(work)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"bare calls failed: {proc.stderr.strip().splitlines()[-1:]}")
        comps.append(comp)
        bare_runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        log(f"overhead: repetition {rep + 1}/{reps} done")
    walls = [c["wall_s"] for c in comps]
    out = {
        "compress": {
            "command": comps[0]["command"],
            "wall_s": float(np.median(walls)),
            "wall_s_range": [min(walls), max(walls)],
            "reps": reps,
        },
        "reps": reps,
        "backends": {},
    }
    for key in bare_runs[0]:
        pipe = [
            {s: c["stages"][f"{s}/{key}"] for s in ("export", "verify", "profile")} for c in comps
        ]
        bare = [b[key] for b in bare_runs]
        ratios = [sum(p.values()) / sum(b.values()) for p, b in zip(pipe, bare)]
        med = lambda rows: {s: float(np.median([r[s] for r in rows])) for s in rows[0]}
        out["backends"][key] = {
            "bare": med(bare),
            "pipeline": med(pipe),
            "ratio": float(np.median(ratios)),
            "ratio_range": [min(ratios), max(ratios)],
            "ratios": ratios,
        }
        log(f"overhead {key}: ratios {', '.join(f'{r:.2f}' for r in ratios)}")
    return out


def bare_main(run_dir: Path, work: Path, warmup: int = 5, runs: int = 50) -> None:
    """--bare: time the library calls on the run's student (the recipe's warm-up and runs,
    the same calibration draw, test split and random inputs as compress), print JSON."""
    from pipeline.checkpoint import load_model

    model, _, _ = load_model(run_dir / "calibrate")
    d = load_dataset("digits")
    rng = np.random.default_rng(0)
    calib = d.x_train[np.sort(rng.choice(len(d.x_train), CALIB, replace=False))]
    x_rand = np.random.default_rng(1234).standard_normal((32, 1, 8, 8)).astype(np.float32)
    folder = work / "bare"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for key, fn in (("executorch-xnnpack-int8", bare_executorch), ("tflite-int8", bare_tflite)):
        out[key] = fn(
            model.eval(), torch.zeros(1, 1, 8, 8), calib, d.x_test, x_rand, folder, warmup, runs
        )
    print(json.dumps(out))


# ---------------------------------------------------------------------------------------------


def section(results: list[dict], over: dict, env: tuple, minutes: float, quick: bool) -> str:
    lines = [
        HEADING,
        "",
        (
            f"Written by `benchmarks/compare_recipes.py{' --quick' if quick else ''}` in one run "
            f"of {minutes:.0f} minutes on {describe_env(*env)}. Data: real CIFAR-10 from "
            "../shared/data/cifar10 (train subset as stated, first test images as stated); "
            f"seed {SEED}; every contender at {1 / KEEP:.1f}x MAC reduction (counted by "
            f"torch-pruning), fine-tuned for the same epochs with AdamW (one-cycle, lr "
            f"{FT['lr']}, batch {FT['batch_size']}); int8 .pte through PT2E/XNNPACKQuantizer "
            f"with {CALIB} calibration images from the training split. Accuracy: the exported "
            "file run through executorch.runtime (measured). Latency: 1 thread, batch 1, "
            "median of interleaved rounds with the interquartile range (measured). MACs and "
            "parameters: counted; `nonzero` counts parameters that are not zero."
        ),
        "",
    ]
    goals = []
    for r in results:
        cfg = r["config"]
        lines += [
            (
                f"### {r['model']}: {r['data']}, teacher {cfg['teacher_epochs']} epochs, "
                f"{cfg['epochs']} epochs per contender, {r['test_images']} test images"
            ),
            "",
            (
                "| recipe | int8 .pte accuracy | PyTorch fp32 accuracy | MACs | params "
                "(nonzero) | .pte bytes | latency ms (IQR) | speed-up / MAC reduction | "
                "recipe wall s | how |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label, x in r["rows"].items():
            lat = x["latency"]
            lines.append(
                f"| {label} | {x['pte_accuracy']:.2%} | {x['torch_accuracy']:.2%} | "
                f"{x['macs']:,} ({x['macs'] / r['macs0']:.0%}) | {x['params']:,} "
                f"({x['nonzero_params']:,}) | {x['bytes']:,} | {lat['median_ms']:.3f} "
                f"({lat['q1_ms']:.3f}-{lat['q3_ms']:.3f}) | {x['speedup']:.2f}x / "
                f"{x['mac_reduction']:.2f}x = {x['speedup_per_mac_reduction']:.2f} | "
                f"{x['seconds']:.0f} | {x['notes']} |"
            )
        s, c = r["rows"]["slimship"], r["rows"]["common"]
        gain = (s["pte_accuracy"] - c["pte_accuracy"]) * 100
        goals.append(
            f"- {r['model']}: slimship - common = {gain:+.2f} points of int8 .pte "
            f"accuracy (goal >= +0.5: {'met' if gain >= 0.5 else 'NOT met'}); slimship's "
            f"speed-up / MAC reduction {s['speedup_per_mac_reduction']:.2f} (goal >= 0.8:"
            f" {'met' if s['speedup_per_mac_reduction'] >= 0.8 else 'NOT met'})."
        )
        lines.append("")
    lines += ["### Goals", ""] + goals + [""]
    comp = over["compress"]
    lines += [
        "### The pipeline's own cost",
        "",
        (
            f"`{comp['command']}`: {comp['wall_s']:.0f} s wall (measured, median of "
            f"{comp['reps']} runs, range {comp['wall_s_range'][0]:.0f}-"
            f"{comp['wall_s_range'][1]:.0f} s, every stage fresh). Its export + verify + profile stages against the library calls they "
            "make, written out in `bare_executorch` / `bare_tflite` and run on the same student "
            "(quantize, lower/convert, save, reference outputs on the test split and 32 random "
            "inputs, reload and run them, a latency loop, a fresh process that loads and runs "
            "the file for peak RSS, and for ExecuTorch the memory plan and the ETDump "
            "profile). What the pipeline "
            "adds: sha256 and manifest records, saving references and outputs, parity and "
            "calibration figures, device estimates, the planned-memory read, logs."
        ),
        "",
        (
            f"Each figure is the median of {over['reps']} repetitions (compress, then the bare "
            "calls in a fresh process, alternating); the ratio's range is beside it."
        ),
        "",
        "| backend | pipeline s (export / verify / profile) | bare calls s | ratio (range) |",
        "|---|---|---|---|",
    ]
    worst = 0.0
    for key, b in over["backends"].items():
        p, q = b["pipeline"], b["bare"]
        worst = max(worst, b["ratio"])
        lines.append(
            f"| {key} | {sum(p.values()):.1f} ({p['export']:.1f} / {p['verify']:.2f} / "
            f"{p['profile']:.1f}) | {sum(q.values()):.1f} ({q['export']:.1f} / "
            f"{q['verify']:.2f} / {q['profile']:.1f}) | {b['ratio']:.2f}x "
            f"({b['ratio_range'][0]:.2f}-{b['ratio_range'][1]:.2f}) |"
        )
    lines += [
        "",
        (
            f"Goal (overhead <= 1.2x the bare calls): {'met' if worst <= 1.2 else 'NOT met'}"
            f" (worst median {worst:.2f}x)."
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one model, tiny budget: minutes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/slimship-compare"))
    ap.add_argument("--out", type=Path, help="write the section here instead of RESULTS.md")
    ap.add_argument("--bare", type=Path, metavar="RUN_DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bare:
        bare_main(args.bare, args.work)
        return 0
    if not CIFAR.is_dir():
        print(f"error: real CIFAR-10 expected at {CIFAR} (see ../shared/data)", file=sys.stderr)
        return 2
    run = QUICK if args.quick else FULL
    torch.set_num_threads(2 if not args.quick else 1)
    start_env, t0 = environment(), time.perf_counter()
    results = [bench_model(name, cfg, run, args.work) for name, cfg in run["models"].items()]
    over = overhead(args.work, args.quick)
    minutes = (time.perf_counter() - t0) / 60
    text = section(results, over, (start_env, environment()), minutes, args.quick)
    (args.work / "compare_recipes.json").write_text(
        json.dumps(
            {
                "results": results,
                "overhead": over,
                "run": run,
                "ft": FT,
                "distill": asdict(DistillConfig()),
            },
            indent=1,
            default=str,
        )
    )
    print(text)
    if args.out:
        args.out.write_text(text)
    elif not args.quick:
        write_section(HEADING, text)
        log(f"wrote {HEADING!r} in benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
