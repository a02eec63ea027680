"""A team's photos at phone resolution (issue 24): `cli.py compress --target android --model
torchvision:mobilenet_v2 --data DIR --input-size 224` on real CIFAR-10 photos written as PNG
class folders, end to end, and what it gives: accuracy per stage and per file, MACs, file
sizes, parity, latency on this host, and the wall time of each stage.

    .venv/bin/python benchmarks/photos_224.py            # 2,000 photos, 5 + 2 epochs, 224 px
    .venv/bin/python benchmarks/photos_224.py --quick    # 200 photos, 1 + 1 epochs, 64 px

CIFAR-10 photos are 32x32, so every one is upsampled to 224 (the report counts them); the
network is trained from scratch (no pretrained weights can be fetched here). The run directory
under --work is kept: a re-run reuses its finished stages, as compress does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, describe_env, environment, log, publish
from image_loader import write_folder

HEADING = "## Photos at 224x224 through compress (issue 24)"
MODEL = "torchvision:mobilenet_v2"


def compress(folder: Path, size: int, epochs: tuple[int, int], work: Path) -> dict:
    out = work / "out"
    cmd = [
        sys.executable, str(ROOT / "cli.py"), "compress", "--target", "android", "--model", MODEL,
        "--data", str(folder), "--input-size", str(size), "--epochs", str(epochs[0]),
        "--distill-epochs", str(epochs[1]), "--out", str(out), "--run-dir", str(work / "run"),
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    report = out / "android" / "report.json"
    if proc.returncode != 0 and not report.is_file():  # a failed check still writes its report
        raise SystemExit(f"compress failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    manifest = json.loads((work / "run" / "manifest.json").read_text())
    return {
        "command": " ".join(["cli.py", *cmd[2:]]),
        "exit": proc.returncode,
        "wall_s": wall,
        "stage_s": {k: v["seconds"] for k, v in manifest["stages"].items()},
        "report": json.loads(report.read_text()),
    }


def _v(fig) -> float:
    return fig["value"]


def _parity(p: dict) -> str:
    t = p["test_split"]
    return (f"{p['state']}: top-1 agreement {_v(t['top1_agreement']):.3f} "
            f"({_v(t['near_ties'])} near-ties left out; {_v(t['top1_agreement_all']):.3f} with "
            f"them), SQNR {_v(t['sqnr_db']):.1f} dB")  # fmt: skip


def section(res: dict, env: tuple, quick: bool) -> str:
    r = res["report"]
    d = r["data"]
    smoke = " (--quick: a smoke run, not the result)" if quick else ""
    stages = [
        f"| {name} | {_v(s['accuracy']):.1%} | {_v(s['macs']):,} | - | - | - |"
        for name, s in r["stages"].items()
        if "accuracy" in s  # not the temperature stage
    ]
    files = [
        f"| {b['file']} ({b['precision']}) | {_v(b['parity']['file_accuracy']):.1%} | "
        f"{_v(b['macs']):,} | {_v(b['bytes']):,} | {_parity(b['parity'])} | "
        f"{_v(b['latency'][0]['p50']):.2f} |"
        for b in r["backends"].values()
    ]
    times = ", ".join(f"{k} {v:.0f} s" for k, v in res["stage_s"].items())
    return "\n".join([
        HEADING, "",
        f"`{res['command']}`, measured on {describe_env(*env)}{smoke}.", "",
        (f"Data: {res['images']:,} real CIFAR-10 training photos as PNG class folders "
         f"({_v(d['train']):,} train / {_v(d['val']):,} val / {_v(d['test']):,} test, counted; "
         f"{'; '.join(d['notes'])}), {MODEL} trained from scratch. Accuracy measured on the "
         "test split; latency p50 on this host's CPU, 1 thread. Top-1 agreement leaves out "
         "near-ties, counted: test images whose reference leads by at most two steps of its int8 "
         "output grid, which one step of rounding in each of two logits reverses."), "",
        "| stage / file | accuracy | MACs (counted) | bytes | parity against its PyTorch reference (measured) | p50 ms |",
        "|---|---|---|---|---|---|",
        *stages, *files, "",
        (f"compress exited {res['exit']}"
         + (": " + "; ".join(r["problems"]) if r["problems"] else " (every check passed)") + "."),
        "",
        (f"Stage times (measured when each stage ran): {times}. This invocation took "
         f"{res['wall_s'] / 60:.1f} min (stages already in its run directory are reused)."),
    ])  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 photos at 64 px: a smoke run")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-photos-224")
    ap.add_argument("--out", type=Path, default=None, help="write the section here instead")
    args = ap.parse_args(argv)
    images, size, epochs = (200, 64, (1, 1)) if args.quick else (2000, 224, (5, 2))
    start = environment()
    folder = write_folder(args.work / f"cifar-{images}", images)
    log(f"compress {MODEL} on {images} photos at {size} px")
    res = compress(folder, size, epochs, args.work) | {"images": images}
    text = section(res, (start, environment()), args.quick)
    publish(HEADING, text, args.out, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
