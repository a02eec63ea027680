"""The hand-off bundle `<out>/<target>/`: model files, model.json, golden.npz, report.json and
manifest.json. It is assembled in a temporary folder beside its destination and renamed into
place last, so a crash never leaves a bundle that looks complete but is not."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ground import faults
from ground.errors import UsageError
from pipeline import bundle_readme, report_html
from pipeline.data import Dataset
from pipeline.rundir import (
    atomic_path,
    file_record,
    list_files,
    sha256_file,
    sha256_path,
    umask_mode,
    write_bytes,
    write_json,
)

GOLDEN_COUNT = 8


def golden_key(backend: str) -> str:
    return backend.replace("-", "_")


def is_bundle(folder: Path) -> bool:
    """Whether `folder` holds a manifest.json that slimship wrote."""
    try:
        m = json.loads((Path(folder) / "manifest.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(m, dict) and {"created", "target", "files"} <= m.keys()


def check_output(dest: Path) -> None:
    """Before any work: `dest` (OUT/<target>) may be replaced only if it is a bundle of ours."""
    dest = Path(dest)
    for parent in (dest.parent, *dest.parent.parents):
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"--out {dest.parent}: {parent} is not a directory; give a directory")
        if parent.exists():  # the nearest folder that exists is where the bundle gets created
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UsageError(f"--out {dest.parent}: {parent} is not writable by this user")
            break
    if dest.exists() and not (dest.is_dir() and is_bundle(dest)):
        raise UsageError(
            f"--out {dest.parent}: {dest} exists and is not a slimship bundle (no manifest.json "
            "of ours); move it away or give another --out, so that nothing of yours is replaced"
        )


def verify(folder: Path) -> None:
    """Every file manifest.json lists is present with its size and sha256 (a bundle that was
    changed after it was written is refused, naming the first file that differs)."""
    folder = Path(folder)
    if not is_bundle(folder):
        raise UsageError(f"{folder}: not a slimship bundle (no readable manifest.json of ours)")
    for rec in json.loads((folder / "manifest.json").read_text())["files"]:
        p = folder / str(rec.get("path", ""))
        if folder.resolve() not in p.resolve().parents or not p.is_file():
            raise UsageError(f"{p}: listed in {folder / 'manifest.json'} but missing")
        if p.stat().st_size != rec.get("bytes") or sha256_file(p) != rec.get("sha256"):
            raise UsageError(
                f"{p}: differs from {folder / 'manifest.json'} (changed after the bundle was "
                "written); rebuild the bundle or restore the file"
            )


def publish(dest: Path, report: dict, backends: dict, data: Dataset, spec: dict) -> Path:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.*.partial"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    os.chmod(tmp, umask_mode(directory=True))
    try:
        _assemble(tmp, report, backends, data, spec)
        faults.point("bundle:assembled")
        _swap_into_place(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def _assemble(folder: Path, report: dict, backends: dict, data: Dataset, spec: dict) -> None:
    golden = {"x": data.x_test[:GOLDEN_COUNT], "y": data.y_test[:GOLDEN_COUNT]}
    # the image files themselves, so an app can check its own decoding and preprocessing
    for i, f in enumerate(data.test_files[:GOLDEN_COUNT]):
        golden[f"raw_{i}"] = np.frombuffer(Path(f).read_bytes(), np.uint8)
    entries = {
        name: _copy_file(folder, name, r, report["backends"][name], golden)
        for name, r in backends.items()
        if "error" not in r
    }
    model_json = _model_json(report, data, spec, entries, len(golden["y"]))
    write_json(folder / "model.json", model_json)
    write_bytes(folder / "README.md", bundle_readme.render(model_json, report).encode())
    with atomic_path(folder / "golden.npz") as t, open(t, "wb") as f:
        np.savez(f, **golden)
    write_json(folder / "report.json", report)
    write_bytes(folder / "report.html", report_html.render(report).encode())
    files = [file_record(p, folder) for p in list_files(folder)]
    write_json(
        folder / "manifest.json",
        {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "target": report["target"],
            "files": files,
        },
    )


def _copy_file(folder: Path, name: str, r: dict, rb: dict, golden: dict) -> dict:
    """Copy one backend's file into the bundle, add its golden outputs; its model.json entry."""
    src = r["export"].dir / r["file"]
    if src.is_dir():
        shutil.copytree(src, folder / r["file"])
    else:
        shutil.copy2(src, folder / r["file"])
    outputs = r["verify"].dir / "outputs.npz"
    if outputs.exists():  # only files that ran here have golden outputs
        with np.load(outputs) as o:
            golden[golden_key(name)] = o["test"][:GOLDEN_COUNT]
    return {
        "file": r["file"],
        "sha256": sha256_path(src),
        "precision": r["precision"],
        "io": rb["io"],
        "golden_key": golden_key(name) if golden_key(name) in golden else None,
        "parity": {
            "state": rb["parity"]["state"],
            **{
                k: rb["parity"]["test_split"][k]["value"]
                for k in ("sqnr_db", "top1_agreement", "max_abs_diff")
                if "test_split" in rb["parity"]
            },
        },
    }


def _model_json(report: dict, data: Dataset, spec: dict, entries: dict, golden_count: int) -> dict:
    """What an app needs to feed the model and read its output, with the bundle's files."""
    c, h, w = spec["input_shape"]
    temperature = report["stages"].get("temperature")
    return {
        "model": spec["name"],
        "inputs": [{"name": "x", "shape": [1, c, h, w], "dtype": "float32", "layout": "NCHW"}],
        "outputs": [
            {
                "name": "logits",
                "shape": [1, len(data.labels)],
                "dtype": "float32",
                "meaning": "unnormalised class scores; softmax gives probabilities",
            }
        ],
        "preprocessing": data.preprocessing.describe(),
        "labels": data.labels,
        "temperature": _temperature(temperature) if temperature is not None else None,
        "backends": entries,
        "golden": {
            "file": "golden.npz",
            "inputs_key": "x",
            "labels_key": "y",
            "count": golden_count,
            "note": "x is already preprocessed model input",
            **(
                {
                    "raw_keys": [
                        f"raw_{i}" for i in range(min(golden_count, len(data.test_files)))
                    ],
                    "raw_note": "raw_i: the bytes of the image file x[i] was made from",
                }
                if data.test_files
                else {}
            ),
        },
        "ok": report["ok"],
    }


def _temperature(t: dict) -> dict:
    """The T folded into the classifier (and the one fitted), as plain numbers for the app."""
    return {
        **{k: t[k]["value"] for k in ("temperature_applied", "temperature_fitted")},
        **{k: t[k] for k in ("folded", "decision")},
        # T the files could not carry: the app divides the logits by it
        "app_divides_logits_by": (t.get("app_divides_logits_by") or {}).get("value"),
    }


def _swap_into_place(tmp: Path, dest: Path) -> None:
    """Rename the finished bundle over the old one; the old one is removed only afterwards."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
