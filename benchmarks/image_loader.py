"""Image folders at scale (issue 24): the train stage's peak memory on 2,000 against 20,000
folder images, and slimship's loader against torchvision's ImageFolder + DataLoader.

    .venv/bin/python benchmarks/image_loader.py            # 2,000 vs 20,000 images at 64 px
    .venv/bin/python benchmarks/image_loader.py --quick    # 200 vs 600 images at 32 px

The folders are real CIFAR-10 training images (../shared/data/cifar10/train.npz) written as
PNG files into class folders (kept under --work and reused). Memory: `cli.py train --epochs 1`
runs in a child process of a fresh process, whose RUSAGE_CHILDREN peak RSS is read: the
largest single process of the run (the train stage, or one of its loader workers). Speed: one
pass over the training images, batches of 64, the same worker count, interleaved rounds,
median images/s.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import CIFAR, ROOT, describe_env, environment, log, publish

HEADING = "## Image folders: memory and loader speed (issue 24)"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_folder(root: Path, n: int) -> Path:
    """The first n CIFAR-10 training images as PNG files in class folders (reused if there)."""
    from PIL import Image

    if root.is_dir() and sum(1 for _ in root.rglob("*.png")) == n:
        return root
    with np.load(CIFAR / "train.npz") as f:
        x, y = f["x"][:n], f["y"][:n]
    for i, (img, label) in enumerate(zip(x, y)):
        (root / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / CLASSES[label] / f"{i:05d}.png")
    return root


def peak_rss(folder: Path, size: int, work: Path) -> int:
    """KiB: the train stage's largest process, measured from a fresh parent process."""
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(folder), str(size), str(work)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1])


def rss_child(folder: str, size: str, work: str) -> None:
    run = Path(work) / f"run-{Path(folder).name}"
    subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "train", "--data", folder, "--input-size", size,
         "--epochs", "1", "--out", str(run / "out"), "--run-dir", str(run / "rd")],
        check=True, capture_output=True,
    )  # fmt: skip
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def slimship_pass(folder: Path, size: int) -> tuple[int, float]:
    """(images, seconds) for one epoch of batches from slimship's loader."""
    from pipeline import train
    from pipeline.data import load_dataset

    d = load_dataset(str(folder), input_size=size)
    perm = torch.randperm(len(d.y_train), generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    n = sum(len(yb) for _, yb in train._batches(perm, d.x_train, torch.from_numpy(d.y_train), 64))
    return n, time.perf_counter() - t


def torchvision_pass(folder: Path, size: int, mean, std) -> tuple[int, float]:
    """The same with torchvision's ImageFolder and DataLoader, same transforms and workers."""
    from torchvision import datasets, transforms

    from pipeline import train

    tf = transforms.Compose([
        transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])  # fmt: skip
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(str(folder), transform=tf), batch_size=64, shuffle=True,
        num_workers=train.loader_workers(), prefetch_factor=4,
    )  # fmt: skip
    t = time.perf_counter()
    n = sum(len(yb) for _, yb in loader)
    return n, time.perf_counter() - t


def speed(folder: Path, size: int, rounds: int) -> dict:
    from pipeline.data import load_dataset

    pre = load_dataset(str(folder), input_size=size).preprocessing
    rates = {"slimship": [], "torchvision": []}
    for r in range(rounds):
        order = ["slimship", "torchvision"] if r % 2 == 0 else ["torchvision", "slimship"]
        for name in order:
            n, s = (
                slimship_pass(folder, size)
                if name == "slimship"
                else torchvision_pass(folder, size, pre.mean, pre.std)
            )
            rates[name].append(n / s)
            log(f"  {name}: {n} images in {s:.1f} s ({n / s:.0f} images/s)")
    return {k: float(np.median(v)) for k, v in rates.items()}


def section(res: dict, start: dict, end: dict) -> str:
    small, large = res["sizes"]
    rss = res["rss_kib"]
    ratio = rss[str(large)] / rss[str(small)]
    in_memory = large * 0.8 * 3 * res["size"] ** 2 * 4 / 2**20
    sp = res["speed"]
    overhead = sp["torchvision"] / sp["slimship"] - 1
    quick = " (--quick: a smoke run, not the result)" if res["quick"] else ""
    memory = (
        f"{large:,} vs {small:,} images: {ratio:.2f}x the peak RSS (goal: within 10 %, "
        f"{'met' if ratio <= 1.10 else 'not met'}). Decoded into memory as float32 the "
        f"{large:,}-image training split alone would take {in_memory:.0f} MiB (counted)."
    )
    loaders = (
        f"slimship's loader overhead: {overhead:+.1%} against torchvision's (goal <= +10 %, "
        f"{'met' if overhead <= 0.10 else 'not met'}); both resize the shorter side, "
        "center-crop, scale and normalise, with the same workers and batch size; torchvision "
        "reads the whole folder, slimship its training split."
    )
    return "\n".join([
        HEADING, "",
        f"Measured on {describe_env(start, end)}{quick}.", "",
        (f"Real CIFAR-10 training images as PNG files in class folders, decoded at "
         f"{res['size']}x{res['size']} (`--input-size {res['size']}`)."), "",
        "| folder images | train stage peak RSS (measured, largest process) |", "|---|---|",
        *[f"| {n:,} | {rss[str(n)] / 1024:.0f} MiB |" for n in (small, large)], "",
        memory, "",
        "| loader | images/s (measured, median of interleaved passes) |", "|---|---|",
        f"| slimship (LazyRows + DataLoader workers) | {sp['slimship']:.0f} |",
        f"| torchvision ImageFolder + DataLoader | {sp['torchvision']:.0f} |", "",
        loaders,
    ])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-image-loader")
    ap.add_argument("--out", type=Path, default=None, help="write the section here instead")
    ap.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    sizes, size, rounds = ((200, 600), 32, 1) if args.quick else ((2000, 20000), 64, 3)
    start = environment()
    res = {"quick": args.quick, "sizes": sizes, "size": size, "rss_kib": {}}
    for n in sizes:
        folder = write_folder(args.work / f"cifar-{n}", n)
        res["rss_kib"][str(n)] = peak_rss(folder, size, args.work)
        log(f"{n} images: peak RSS {res['rss_kib'][str(n)] / 1024:.0f} MiB")
    res["speed"] = speed(args.work / f"cifar-{sizes[1]}", size, rounds)
    (args.work / "image_loader.json").write_text(json.dumps(res, indent=1) + "\n")
    text = section(res, start, environment())
    publish(HEADING, text, args.out, args.quick)


if __name__ == "__main__":
    main()
