"""Library architectures pruned to half the MACs (issue 26): torchvision and timm models the zoo
does not have, each trained briefly on a CIFAR-10 slice, pruned with slimship's pruner to 50 %
of its MACs (no fine-tuning), and its test accuracy measured before and after.

    .venv/bin/python benchmarks/prune_library_models.py            # 16 architectures
    .venv/bin/python benchmarks/prune_library_models.py --quick    # 2 small ones, a smoke run

Each architecture is built as `--model torchvision:NAME` / `timm:NAME` builds it (random
initialisation, 10 classes, 32x32 RGB) and trained by slimship's training loop
(`pipeline.train.fit` through `_common.teacher`: AdamW, one-cycle, lr 0.003, batch 64, weight
decay 5e-4, seed 0) on the first images of ../shared/data/cifar10/train.npz (less the 10 %
validation split). It is then pruned by `prune_to_macs(model, x, 0.5)` (l2 importance,
round_to 8, min_width 0.25): it either prunes, every pruned group verified exactly or listed
as unverified with the reason, or it refuses in one line. Accuracy is measured on test.npz
(the first 1,000 official test images). Rows are kept in --work as JSON, one per architecture
and setting, so a run that stops resumes at the next architecture. The table goes into
benchmarks/RESULTS.md under the heading below, replacing that section only (--out: elsewhere).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from _common import CIFAR, ROOT, describe_env, environment, log, publish, teacher
from torch import nn

from ground.errors import UsageError
from pipeline.data import load_dataset
from pipeline.prune import prune_to_macs
from pipeline.train import accuracy, predict

HEADING = "## Library architectures pruned to half the MACs (issue 26)"
FRACTION = 0.5
SEED = 0
BN_IMAGES = 512  # training images the batch norms' statistics are estimated again on

# name -> the structure it brings that the zoo lacks; the two the issue names first
ARCHS = {
    "torchvision:resnext50_32x4d": "grouped 3x3 convs (groups=32)",
    "torchvision:shufflenet_v2_x0_5": "channel split, concat, channel shuffle",
    "torchvision:squeezenet1_1": "fire modules, 1x1-conv classifier",
    "torchvision:densenet121": "dense blocks (concatenation)",
    "timm:convnext_atto": "LayerNorm over channels, depthwise 7x7",
    "torchvision:regnet_x_400mf": "grouped convs, group width 16",
    "torchvision:efficientnet_b0": "squeeze-excitation, SiLU",
    "timm:mobilevit_xxs": "attention over unfolded patches",
    "timm:ghostnet_050": "ghost modules (concat and slice)",
    "torchvision:mnasnet0_5": "searched inverted residuals",
    "torchvision:mobilenet_v3_small": "hard-swish, SE with hard-sigmoid",
    "torchvision:googlenet": "inception modules (four branches)",
    "timm:efficientvit_b0": "linear attention, multi-scale grouped convs",
    "timm:deit_tiny_patch16_224": "vision transformer (qkv attention)",
    "timm:mixer_s16_224": "MLP-Mixer (token and channel MLPs)",
    "timm:resnext26ts": "timm's ResNeXt (grouped convs, SiLU)",
}
ROW_FORMAT = "r3"  # rows kept in --work under another format are measured again
QUICK = ["torchvision:squeezenet1_1", "torchvision:mnasnet0_5"]


def bench(arch: str, data, epochs: int, work: Path) -> dict:
    """One row: the dense model trained, its accuracy, then pruned and measured again."""
    model, _, train_s = teacher(arch, data, epochs, SEED, work / "teachers")
    acc0 = accuracy(predict(model, data.x_test), data.y_test)
    row = {"arch": arch, "brings": ARCHS[arch], "train_s": train_s, "acc_dense": acc0}
    row["acc_dense_bn"] = _bn_accuracy(model, data)
    x = torch.from_numpy(data.x_test[:1])  # the example input the graph is traced with
    t0 = time.perf_counter()
    try:
        res = prune_to_macs(model, x, FRACTION)
    except UsageError as e:  # the one-line refusal; anything else is a bug and stops the run
        return {**row, "outcome": "refused", "message": str(e)}
    plan = res.plan
    return {
        **row,
        "outcome": "pruned",
        "prune_s": time.perf_counter() - t0,
        "acc_pruned": accuracy(predict(res.model, data.x_test), data.y_test),
        "acc_pruned_bn": _bn_accuracy(res.model, data),
        "macs_before": res.macs_before,
        "macs_after": res.macs_after,
        "params_before": res.params_before,
        "params_after": res.params_after,
        "groups": {k: len(plan[k]) for k in ("verified", "unverified", "frozen", "floored")},
        "unverified_why": plan["unverified_why"],
        "frozen": plan["frozen"],
        "floored": plan["floored"],
    }


def _bn_accuracy(model, data) -> float | None:
    """Test accuracy once the batch norms' running statistics are estimated again on training
    images (no weight changes, not fine-tuning); None for a model without batch norm."""
    m = copy.deepcopy(model).eval()
    bns = [b for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return None
    for b in bns:  # only the norms see training mode: dropout and drop-path stay off
        b.reset_running_stats()
        b.momentum = None  # a plain average over the batches below
        b.train()
    with torch.no_grad():
        for i in range(0, BN_IMAGES, 64):
            m(torch.from_numpy(data.x_train[i : i + 64]))
    return accuracy(predict(m, data.x_test), data.y_test)


def cached_row(arch: str, data, epochs: int, work: Path) -> dict:
    """The row from --work when this architecture ran with these settings, else measured."""
    name = f"{arch.replace(':', '-')}-n{len(data.y_train)}-e{epochs}-{ROW_FORMAT}.json"
    path = work / "rows" / name
    if path.is_file():
        log(f"{arch}: row from {path}")
        return json.loads(path.read_text())
    row = bench(arch, data, epochs, work)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1) + "\n")
    return row


def table_row(r: dict) -> str:
    name = f"`{r['arch']}`"
    if r["outcome"] == "refused":
        dense_bn = "–" if r["acc_dense_bn"] is None else f"{r['acc_dense_bn']:.1%}"
        return (
            f"| {name} | {r['brings']} | refused: {r['message']} | – | {r['acc_dense']:.1%} → – "
            f"| {dense_bn} → – | – |"
        )
    g = r["groups"]
    macs = f"{r['macs_before'] / 1e6:.1f} → {r['macs_after'] / 1e6:.1f}"
    share = r["macs_after"] / r["macs_before"]
    bn = (
        "no batch norm"
        if r["acc_pruned_bn"] is None
        else f"{r['acc_dense_bn']:.1%} → {r['acc_pruned_bn']:.1%}"
    )
    groups = f"{g['verified']} / {g['unverified']} / {g['frozen']} / {g['floored']}"
    return (
        f"| {name} | {r['brings']} | pruned to {share:.0%} in {r['prune_s']:.0f} s | {macs} | "
        f"{r['acc_dense']:.1%} → {r['acc_pruned']:.1%} | {bn} | {groups} |"
    )


def _short(why: str, limit: int = 160) -> str:
    return why if len(why) <= limit else why[:limit].rsplit(" ", 1)[0] + " …"


def notes(rows: list[dict], majority: float) -> list[str]:
    """Models the brief training did not teach; why groups were left unverified or at their
    width, and which were cut to their floor."""
    best = lambda r: max(r["acc_dense"], r["acc_dense_bn"] or 0.0)
    untaught = [f"`{r['arch']}`" for r in rows if best(r) <= majority + 0.02]
    out = []
    if untaught:
        out.append(
            f"- {', '.join(untaught)}: dense accuracy, with or without its batch-norm "
            f"statistics re-estimated, within 2 points of the largest class's "
            f"share ({majority:.1%}): the brief training did not teach it, so its accuracy "
            "after pruning says nothing about pruning"
        )
    for r in rows:
        if r["outcome"] != "pruned":
            continue
        for kind, items in (("unverified", r["unverified_why"]), ("frozen", r["frozen"])):
            reasons = sorted(set(items.values()))
            if reasons:
                text = "; ".join(_short(why) for why in reasons[:3])
                out.append(f"- `{r['arch']}`, {len(items)} {kind}: {text}")
        if r["floored"]:
            out.append(
                f"- `{r['arch']}`, {len(r['floored'])} group(s) cut to their floor (0.25 of "
                f"the width, a warning line each run): {', '.join(r['floored'][:6])}"
                + (", …" if len(r["floored"]) > 6 else "")
            )
    return out


def section(rows: list[dict], meta: dict, start: dict, end: dict) -> str:
    pruned = [r for r in rows if r["outcome"] == "pruned"]
    quick = " `--quick` (a smoke run, not the result)" if meta["quick"] else ""
    how = (
        f"Produced by `benchmarks/prune_library_models.py`{quick}: training "
        f"{sum(r['train_s'] for r in rows) / 60:.1f} min and pruning with its checks "
        f"{sum(r.get('prune_s', 0) for r in rows) / 60:.1f} min in all (measured, summed over "
        "the rows; models trained by an earlier run are reused from --work). "
        f"Each architecture built as `--model torchvision:NAME` / `timm:NAME` builds it (random "
        f"initialisation, 10 classes, 32x32 RGB), trained by slimship's training loop (AdamW, "
        f"one-cycle, lr 0.003, batch 64, seed {SEED}) for {meta['epochs']} epoch(s) on "
        f"{meta['images']:,} CIFAR-10 training images (train.npz), then pruned by "
        f"`prune_to_macs(model, x, {FRACTION})` (l2, round_to 8, min_width 0.25), **no "
        "fine-tuning**. Accuracies are measured on test.npz (the first 1,000 official test "
        "images) after this brief training: they are those of briefly trained models, not of "
        "the architectures; compare each pruned figure with the dense one beside it. "
        "MACs and parameters are counted by torch-pruning's op counter (it leaves out attention "
        "matmuls). Groups: verified exactly (the pruned model computes what the dense one does "
        "with the removed channels zeroed) / unverified, with the reason / frozen (kept at "
        "their width, with the reason) / cut to their floor (a warning line each). The second "
        f"accuracy column re-estimates the batch-norm running statistics of both models on "
        f"{BN_IMAGES} training images (no weight changes, not fine-tuning): removing channels "
        "shifts the inputs of the norms after them, and stale statistics alone can leave a "
        f"model predicting one class ({meta['majority']:.1%} of test.npz is its largest class); "
        "a brief training also leaves the statistics of norms with a small momentum (MNASNet, "
        "MobileNetV3) far from the trained weights."
    )
    summary = (
        f"{len(pruned)} of {len(rows)} pruned to at most {FRACTION:.0%} of their MACs (within "
        f"the 10 % prune() allows); {len(rows) - len(pruned)} refused in one line; no traceback."
    )
    return "\n".join(
        [
            HEADING,
            "",
            how,
            "",
            f"Measured on {describe_env(start, end)}.",
            "",
            (
                "| architecture | brings | outcome (measured time) | MACs M, dense → pruned "
                "(counted) | accuracy dense → pruned, no fine-tuning (measured) | the same, "
                "batch-norm statistics re-estimated (measured) | groups verified / unverified / "
                "frozen / floored (counted) |"
            ),
            "|---|---|---|---:|---:|---:|---:|",
            *[table_row(r) for r in rows],
            "",
            summary,
            "",
            *notes(rows, meta["majority"]),
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 small architectures, 1 epoch")
    ap.add_argument("--archs", help="comma-separated names (default: all 16)")
    ap.add_argument("--images", type=int, help="training images before the val split")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-prune-library")
    ap.add_argument("--out", type=Path, default=None, help="write the section here instead")
    args = ap.parse_args()
    archs = args.archs.split(",") if args.archs else QUICK if args.quick else list(ARCHS)
    images = args.images or (300 if args.quick else 2500)
    epochs = args.epochs or (1 if args.quick else 3)
    start = environment()
    data = load_dataset(str(CIFAR), limit_train=images)
    rows = []
    for arch in archs:
        rows.append(cached_row(arch, data, epochs, args.work))
        r = rows[-1]
        after = f"{r['acc_pruned']:.1%}" if r["outcome"] == "pruned" else r["message"]
        log(f"{arch}: dense {r['acc_dense']:.1%}, {r['outcome']}: {after}")
    majority = float(np.bincount(data.y_test).max() / len(data.y_test))
    meta = {"quick": args.quick, "epochs": epochs, "images": len(data.y_train)}
    meta["majority"] = majority
    res = {"meta": meta, "rows": rows}
    (args.work / "prune_library_models.json").write_text(json.dumps(res, indent=1) + "\n")
    text = section(rows, meta, start, environment())
    publish(HEADING, text, args.out, args.quick)


if __name__ == "__main__":
    main()
