"""Accuracy at equal measured latency (issue 27): latency-targeted pruning against MAC-targeted
pruning and torch-pruning's uniform ratio, each cut to the same ExecuTorch XNNPACK int8 latency
(0.5 of the dense model's, 1 thread), then fine-tuned alike from one cached teacher.

    .venv/bin/python benchmarks/latency_accuracy.py           # ResNet-20, CIFAR-10 33,300 images
    .venv/bin/python benchmarks/latency_accuracy.py --quick   # small_cnn on digits: a smoke run

The teacher is the augmented ResNet-20 of benchmarks/augmentation.py (10 epochs, flip + pad-crop
4, cached under runs/bench-augmentation/teachers; trained here if missing). The latency-targeted
model is pruned first, with its steps weighed by the MACs they remove (the default: the plan that
keeps the most MACs for the time) and again by the outputs' divergence (prune.latency_weighing
divergence); the first's measured latency is then the target the two others are bisected to (MAC
fraction for slimship's MAC planner, the one ratio for torch-pruning's MetaPruner).
Every contender is fine-tuned the same epochs with the same KD loss, optimiser and augmentation,
and tested on test.npz and the 10k JPEG test set; the five programs are timed side by side at
the end. Each contender's row is written to --work as soon as it is measured; a re-run resumes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from _common import (
    CIFAR,
    ROOT,
    describe_env,
    environment,
    export,
    interleaved_loads,
    log,
    publish,
)
from _common import teacher as cached_teacher
from augmentation import jpeg_test

from ground.errors import UsageError
from pipeline.augment import for_training
from pipeline.config import AugmentConfig, DistillConfig
from pipeline.data import load_dataset
from pipeline.distill import kd_loss_fn
from pipeline.prune import count, prune
from pipeline.prune.latency import LOADS, LatencyCost
from pipeline.train import accuracy, fit, predict
from targets import get_backend

HEADING = "## Accuracy at equal latency: latency- vs MAC-targeted vs uniform pruning (issue 27)"
AUG = AugmentConfig(flip=True, pad_crop=4)
KEEP = 0.5  # of the dense int8 latency (--quick: 0.7, small_cnn's fixed cost is over half)
SEED = 0


def prune_uniform(dense, example, ratio):
    """torch-pruning's example recipe: one ratio for every layer, L2 group magnitude."""
    m = copy.deepcopy(dense).eval()
    head = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1]
    tp.pruner.MetaPruner(
        m,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        round_to=8,
        ignored_layers=[head],
    ).step()
    return m.eval()


def matched(make, cost, example, goal_ms, lo, hi, steps):
    """Bisect the knob of `make` until the measured latency is at or just under goal_ms;
    returns (model, knob, ms): the slowest attempt that fits, else the fastest one. A knob the
    pruner refuses (below its floor) counts as too far."""
    best = None
    for _ in range(steps):
        knob = (lo + hi) / 2
        try:
            model = make(knob)
            ms = cost.measure(model, example)
        except UsageError as e:
            log(f"  knob {knob:.3f}: refused ({e})")
            model, ms = None, 0.0
        fits = ms <= goal_ms
        if model is not None and _closer(best, ms, goal_ms):
            best = (model, knob, ms)
        if model is not None:
            log(f"  knob {knob:.3f}: {ms:.4f} ms (goal {goal_ms:.4f})")
        if fits:  # a larger knob keeps more
            lo = knob
        else:
            hi = knob
    return best


def scanned(make, cost, example, goal_ms, steps):
    """torch-pruning's uniform ratio is not monotone in latency (a layer whose kept width
    rounds to zero is left whole), so ratios are scanned, not bisected: the slowest that
    fits, else the fastest."""
    best = None
    for ratio in np.linspace(0.3, 0.65, 2 * steps):
        model = make(float(ratio))
        ms = cost.measure(model, example)
        log(f"  ratio {ratio:.3f}: {ms:.4f} ms (goal {goal_ms:.4f})")
        if _closer(best, ms, goal_ms):
            best = (model, float(ratio), ms)
    return best


def _closer(best, ms: float, goal: float) -> bool:
    if best is None:
        return True
    if ms <= goal:
        return best[2] > goal or ms > best[2]
    return best[2] > goal and ms < best[2]


def contenders(dense, example, cost, train, keep: float, steps: int) -> dict:
    """{name: (pruned model, note)} at the latency-targeted model's measured latency."""
    lat = prune(dense, example, keep, target=cost, data=train)
    goal = lat.plan["latency"]["achieved_ms"]
    macs = matched(
        lambda f: prune(dense, example, f, target="macs").model,
        cost,
        example,
        goal,
        0.05,
        1.0,
        steps,
    )
    uni = scanned(lambda r: prune_uniform(dense, example, r), cost, example, goal, steps)
    by_kl = prune(dense, example, keep, target=replace(cost, weighing="divergence"), data=train)
    by_kl_ms = by_kl.plan["latency"]["achieved_ms"]
    return {  # name: (model, how it was cut, residual blocks removed)
        "latency-targeted": (
            lat.model,
            f"prune.target latency {keep:g}, {goal:.4f} ms in-loop",
            lat.plan["removed_blocks"],
        ),
        "latency-targeted, weighed by divergence": (
            by_kl.model,
            f"and prune.latency_weighing divergence, {by_kl_ms:.4f} ms in-loop",
            by_kl.plan["removed_blocks"],
        ),
        "MAC-targeted": (macs[0], f"prune.target macs {macs[1]:.3f}, {macs[2]:.4f} ms", []),
        "torch-pruning uniform": (uni[0], f"MetaPruner ratio {uni[1]:.3f}, {uni[2]:.4f} ms", []),
    }


def tune_and_test(model, dense, data, jpeg, epochs: int) -> dict:
    d = DistillConfig()
    fit(
        model,
        data.x_train,
        data.y_train,
        epochs=epochs,
        batch_size=64,
        lr=d.lr,
        seed=SEED,
        desc="fine-tune",
        loss_fn=kd_loss_fn(dense, d.temperature, d.alpha),
        augment=for_training(AUG, data.preprocessing),
    )
    model.eval()
    with torch.no_grad():
        out = {"test_npz": accuracy(predict(model, data.x_test), data.y_test)}
        if jpeg is not None:
            out["test_jpeg"] = accuracy(predict(model, jpeg[0]), jpeg[1])
    return out


def side_by_side(models: dict, example, calib) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        paths = {
            name: export("executorch-xnnpack", m, example, "int8", calib, Path(tmp) / str(i))[
                0
            ].path
            for i, (name, m) in enumerate(models.items())
        }
        return interleaved_loads(paths, example.numpy(), LOADS, rounds=400, warmup=20)


def run(args) -> dict:
    quick = args.quick
    data = load_dataset("digits" if quick else str(CIFAR))
    jpeg = None if quick else jpeg_test(data.preprocessing, None)
    name = "small_cnn" if quick else "resnet20"
    cache = args.work / "teachers" if quick else ROOT / "runs" / "bench-augmentation" / "teachers"
    dense, _, _ = cached_teacher(name, data, 2 if quick else 10, SEED, cache, augment=AUG)
    example = torch.zeros(1, *data.input_shape)
    calib = data.x_train[np.random.default_rng(SEED).choice(len(data.x_train), 64, replace=False)]
    cost = LatencyCost(get_backend("executorch-xnnpack"), "int8", calib)
    rows_path = args.work / "latency_accuracy.json"
    res = json.loads(rows_path.read_text()) if rows_path.is_file() else {"rows": {}}
    with torch.no_grad():
        res["dense"] = {"test_npz": accuracy(predict(dense, data.x_test), data.y_test)}
        if jpeg is not None:
            res["dense"]["test_jpeg"] = accuracy(predict(dense, jpeg[0]), jpeg[1])
    train = (data.x_train, data.y_train)
    models = contenders(dense, example, cost, train, *((0.7, 3) if quick else (KEEP, 7)))
    for who, (model, note, gone) in models.items():
        if who not in res["rows"]:
            acc = tune_and_test(model, dense, data, jpeg, args.epochs or (1 if quick else 3))
            macs = count(model, example)[0]
            res["rows"][who] = {"note": note, "macs": macs, "removed_blocks": gone, **acc}
            args.work.mkdir(parents=True, exist_ok=True)
            rows_path.write_text(json.dumps(res, indent=1) + "\n")
        log(f"{who}: {res['rows'][who]}")
    res["timing"] = side_by_side(
        {"dense": dense} | {k: m for k, (m, _, _) in models.items()}, example, calib
    )
    res["macs_dense"], res["model"], res["train_images"] = (
        count(dense, example)[0],
        name,
        len(data.y_train),
    )
    res["epochs"] = args.epochs or (1 if quick else 3)
    rows_path.write_text(json.dumps(res, indent=1) + "\n")
    return res


def section(res: dict, env: tuple, quick: bool) -> str:
    t = res["timing"]
    dense_ms = t["dense"]["median_ms"]
    jpeg = lambda r: f"{r['test_jpeg']:.2%}" if "test_jpeg" in r else "–"
    rows = [
        f"| {who} | {r['note']} | {t[who]['median_ms']:.4f} ({t[who]['median_ms'] / dense_ms:.2f}) "
        f"| {r['macs'] / res['macs_dense']:.0%} "
        f"| {(dense_ms / t[who]['median_ms']) / (res['macs_dense'] / r['macs']):.2f} "
        f"| {len(r['removed_blocks'])} | {jpeg(r)} | {r['test_npz']:.2%} |"
        for who, r in res["rows"].items()
    ]
    rl, rm = res["rows"]["latency-targeted"], res["rows"]["MAC-targeted"]
    key = "test_jpeg" if "test_jpeg" in rl else "test_npz"
    gain = (rl[key] - rm[key]) * 100
    smoke = " (--quick: a smoke run, not the result)" if quick else ""
    return "\n".join([
        HEADING, "",
        f"`benchmarks/latency_accuracy.py`, measured on {describe_env(*env)}{smoke}.", "",
        (f"{res['model']}, teacher {jpeg(res['dense'])} (10k JPEG) / {res['dense']['test_npz']:.2%} "
         f"(test.npz), {res['train_images']:,} training images. Each contender cut to the "
         f"latency-targeted model's measured latency, then {res['epochs']} epoch(s) of KD "
         "fine-tuning (T=4, alpha 0.7, flip + pad-crop 4), the same for all. Latency: ExecuTorch "
         "XNNPACK int8, 1 thread, all programs timed side by side (each loaded "
         f"{LOADS} times afresh, 400 interleaved rounds, the median of each program's loads' "
         "medians, measured; in brackets the fraction of the dense model's). Latency-targeted "
         "models weigh each step by the share of MACs it removes (default) or by the divergence "
         "of the outputs it adds (prune.latency_weighing divergence), and may remove residual blocks "
         f"whole (prune.remove_blocks): {_blocks(res)}."), "",
        "| contender | how it was cut | int8 ms (of dense) | MACs kept | speed-up ÷ MAC reduction | blocks removed | 10k JPEG | test.npz |",
        "|---|---|---|---|---|---|---|---|",
        f"| dense teacher | – | {dense_ms:.4f} (1.00) | 100% | – | 0 | {jpeg(res['dense'])} | {res['dense']['test_npz']:.2%} |",
        *rows, "",
        (f"Latency-targeted minus MAC-targeted: {gain:+.2f} points on {key.replace('_', ' ')} "
         f"(goal >= +1.0: {'met' if gain >= 1.0 else 'not met'})."),
        *_unequal(t, "latency-targeted"),
    ])  # fmt: skip


def _blocks(res: dict) -> str:
    return (
        "; ".join(
            f"{who} removed {', '.join(r['removed_blocks']) or 'none'}"
            for who, r in res["rows"].items()
            if r["removed_blocks"]
        )
        or "none removed"
    )


def _unequal(t: dict, ref: str) -> list[str]:
    """Contenders whose side-by-side latency is more than 2 % off the reference's: near the
    fixed cost a few % of latency buys many MACs, so their accuracy is not at equal latency."""
    off = {k: v["median_ms"] / t[ref]["median_ms"] for k, v in t.items() if k not in ("dense", ref)}
    off = {k: r for k, r in off.items() if abs(r - 1) > 0.02}
    if not off:
        return []
    named = ", ".join(f"{k} ({r - 1:+.0%})" for k, r in off.items())
    return ["", f"Not at equal latency (side by side, against latency-targeted): {named}."]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small_cnn on digits: a smoke run")
    ap.add_argument("--epochs", type=int, help="fine-tuning epochs (default 3; quick 1)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-latency-accuracy")
    ap.add_argument("--out", type=Path, default=None, help="write the section here instead")
    args = ap.parse_args(argv)
    os.environ.setdefault("SLIMSHIP_LATENCY_CACHE", str(args.work / "tables"))
    start = environment()
    res = run(args)
    publish(HEADING, section(res, (start, environment()), args.quick), args.out, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
