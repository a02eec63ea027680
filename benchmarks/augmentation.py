"""Training augmentation on real CIFAR-10 (issue 24): the CIFAR ResNet-20 trained on the 37k
training images with and without the common recipe's augmentation (flip + pad-and-crop 4),
the same epochs, seed and optimiser, tested on the 10k JPEG test set and on test.npz.

    .venv/bin/python benchmarks/augmentation.py                     # both variants, 20 epochs
    .venv/bin/python benchmarks/augmentation.py --only augmented    # one variant (resumes)
    .venv/bin/python benchmarks/augmentation.py --quick             # 600 images, 1 epoch

Training is slimship's own loop (pipeline/train.py: AdamW, one-cycle, batch 64) on the train
split slimship makes of train.npz (10 % held out for validation, as compress does); each
teacher is cached under --work (benchmarks/_common.teacher) for the scripts that prune it.
Each variant's result is written to --work/augmentation.json as soon as it is measured, and a
re-run measures only what is missing there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from _common import CIFAR, ROOT, describe_env, environment, log, publish, teacher

from pipeline.config import AugmentConfig
from pipeline.data import load_dataset
from pipeline.train import accuracy, predict

HEADING = "## Training augmentation on CIFAR-10 (issue 24)"
VARIANTS = {"plain": AugmentConfig(), "augmented": AugmentConfig(flip=True, pad_crop=4)}


def jpeg_test(pre, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The 10k official test images (decoded from JPEG), preprocessed as the training split."""
    with np.load(CIFAR / "test_full_jpeg.npz") as f:
        x, y = f["x"][:limit], f["y"][:limit]
    return pre.apply(x), y.astype(np.int64)


def measure(variant: str, data, jpeg, epochs: int, work: Path) -> dict:
    model, _, seconds = teacher(
        "resnet20", data, epochs, 0, work / "teachers", augment=VARIANTS[variant]
    )
    with torch.no_grad():
        acc_npz = accuracy(predict(model, data.x_test), data.y_test)
        acc_jpeg = accuracy(predict(model, jpeg[0]), jpeg[1])
    log(f"{variant}: test.npz {acc_npz:.2%}, 10k JPEG {acc_jpeg:.2%}, trained in {seconds:.0f} s")
    return {"test_npz": acc_npz, "test_jpeg": acc_jpeg, "train_seconds": seconds}


def section(res: dict, env: tuple, quick: bool) -> str:
    smoke = " (--quick: a smoke run, not the result)" if quick else ""
    rows = [
        f"| {v} | {VARIANTS[v].flip} | {VARIANTS[v].pad_crop} | {r['test_jpeg']:.2%} | "
        f"{r['test_npz']:.2%} | {r['train_seconds'] / 60:.1f} |"
        for v, r in res["variants"].items()
    ]
    return "\n".join([
        HEADING, "",
        (f"Written by `benchmarks/augmentation.py{' --quick' if quick else ''}` on "
         f"{describe_env(*env)}{smoke}. CIFAR ResNet-20 (slimship's zoo), {res['epochs']} epochs "
         f"on {res['train_images']:,} real CIFAR-10 training images (train.npz less the 10 % "
         "validation split), AdamW one-cycle, lr 0.003, batch 64, seed 0, the same for both "
         "rows; accuracy measured on the 10k official test images (test_full_jpeg.npz, decoded "
         f"from JPEG; {res['jpeg_images']:,} used) and on test.npz (1,000 lossless images)."), "",
        ("| augmentation | flip | pad_crop | accuracy, 10k JPEG test | accuracy, test.npz | "
        "training minutes (measured) |"),
        "|---|---|---|---|---|---|",
        *rows,
    ])  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="600 images, 1 epoch: a smoke run")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--only", choices=list(VARIANTS), help="measure one variant")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-augmentation")
    ap.add_argument("--out", type=Path, default=None, help="write the section here instead")
    args = ap.parse_args(argv)
    if not CIFAR.is_dir():
        print(f"error: real CIFAR-10 expected at {CIFAR} (see ../shared/data)", file=sys.stderr)
        return 2
    torch.set_num_threads(1 if args.quick else 2)
    epochs = 1 if args.quick else args.epochs
    data = load_dataset(str(CIFAR), limit_train=600 if args.quick else None)
    jpeg = jpeg_test(data.preprocessing, 500 if args.quick else None)
    store = args.work / "augmentation.json"
    res = json.loads(store.read_text()) if store.is_file() else {}
    if res.get("epochs") != epochs or res.get("train_images") != len(data.y_train):
        res = {"epochs": epochs, "train_images": len(data.y_train), "variants": {}}
    res["jpeg_images"] = len(jpeg[1])
    start = environment()
    for variant in [args.only] if args.only else list(VARIANTS):
        if variant not in res["variants"]:
            res["variants"][variant] = measure(variant, data, jpeg, epochs, args.work)
            args.work.mkdir(parents=True, exist_ok=True)
            store.write_text(json.dumps(res, indent=1) + "\n")
    text = section(res, (start, environment()), args.quick)
    publish(HEADING, text, args.out, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
