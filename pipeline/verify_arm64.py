"""verify-arm64: run each file of a bundle through its runtime on aarch64 (emulated, see
targets/arm64.py) on the bundle's golden inputs, and compare with the golden outputs the same
file gave on this host.

A file is `verified-arm64` when it loads, its ARM delegate really ran (not a silent fallback to
other kernels), every golden input gets the same top-1 class, and the outputs agree within the
backend's parity tolerance. The result goes into the bundle's report.json (`arm64`, and
`backends.<name>.arm64`). Emulated time is not a latency and is never reported as one.
"""

from __future__ import annotations

import json
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from ground.errors import UsageError
from ground.log import log
from pipeline import report_html
from pipeline.report import counted, measured
from pipeline.rundir import file_record, library_versions, sha256_path, write_bytes, write_json
from pipeline.verify import compare, judge, structural_problems
from targets import arm64, get_backend
from targets._base import Tolerance
from targets.arm64_runner import RUNTIMES

PROVES = (
    "the file loads in the aarch64 build of its runtime, runs there through its ARM "
    "kernels (the delegate checked), and computes what it computes on this host"
)
DOES_NOT = (
    "speed: qemu emulates the instructions, so no time measured here is a latency; "
    "device-specific drivers and accelerators (NPU, GPU) are not exercised"
)


def verify_bundle(bundle: Path, cache: Path | None = None, cpu: str = arm64.DEFAULT_CPU) -> dict:
    bundle = Path(bundle)
    model, golden, report = _read_bundle(bundle)
    files = {}
    with tempfile.TemporaryDirectory() as tmp, arm64.machine(arm64.cache_dir(cache), cpu) as m:
        for name, entry in model["backends"].items():
            why = _why_not_run(name, entry)
            files[name] = (
                {"file": entry["file"], "state": "not-run", "why_not_run": why, "problems": []}
                if why
                else _check(m, bundle, name, entry, golden, report, Path(tmp))
            )
        machine = m.describe()
    block = _summary(files, machine, len(golden["x"]))
    _record(bundle, report, block)
    log(f"[arm64] {block['state']}; recorded in {bundle / 'report.json'}")
    return block


def _read_bundle(bundle: Path) -> tuple[dict, dict, dict]:
    """model.json, golden.npz and report.json; each missing or unreadable one is named. (The
    model files are checked against model.json's sha256 as they are run, so that a corrupted
    file is reported with what it did on aarch64.)"""
    for name in ("model.json", "golden.npz", "report.json"):
        if not (bundle / name).is_file():
            raise UsageError(
                f"{bundle}: no {name}; give a bundle folder written by "
                "`cli.py compress` (e.g. dist/android)"
            )
    return (
        _readable(bundle / "model.json", lambda p: json.loads(p.read_text())),
        _readable(bundle / "golden.npz", lambda p: dict(np.load(p, allow_pickle=False))),
        _readable(bundle / "report.json", lambda p: json.loads(p.read_text())),
    )


def _readable(path: Path, read):
    try:
        return read(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise UsageError(
            f"{path}: unreadable ({type(e).__name__}: {first}); copy the bundle again"
        ) from None


def _why_not_run(name: str, entry: dict) -> str | None:
    if name not in RUNTIMES:
        return f"{name} has no aarch64 Linux runtime (Core ML runs only on Apple's OSes)"
    if entry.get("golden_key") is None:
        return "the bundle has no golden outputs for it (the file did not run on the host)"
    return None


def _check(m, bundle: Path, name: str, entry: dict, golden: dict, report: dict, tmp: Path) -> dict:
    file, path = entry["file"], bundle / entry["file"]
    if not path.exists():
        return {"file": file, "state": "failed", "problems": [f"{file}: missing from the bundle"]}
    problems = []
    if sha256_path(path) != entry["sha256"]:
        problems.append(
            f"{file}: sha256 differs from model.json's record (changed after the "
            "bundle was written)"
        )
    log(f"[arm64] {file}: running on aarch64 ({name}, qemu {m.cpu})")
    res = m.run(name, path, _encode(entry["io"], golden["x"]), tmp)
    if not res["ok"]:
        return {
            "file": file,
            "state": "failed",
            "versions": res.get("versions"),
            "problems": problems + [f"{file}: failed on aarch64: {res['error']}"],
        }
    log(f"[arm64] {file}: ran in {res['seconds_emulated']:.1f} s (emulated; not a latency)")
    ref, out = golden[entry["golden_key"]], _decode(entry["io"], res["outputs"])
    host = report["backends"].get(name, {})
    # the same file on another CPU must pick the same class on every golden input
    tol = Tolerance(**{**host["parity"]["tolerance"], "min_agreement": 1.0})
    broken = structural_problems(ref, out)
    figures = compare(ref, out) if not broken else None
    broken += judge(figures, tol) if figures else []
    # did the ARM delegate run, not a silent fallback to other kernels?
    delegate, not_delegated = get_backend(name).arm64_delegate_check(path, res, host)
    problems += [f"{file}: on aarch64: {p}" for p in broken + not_delegated]
    return {
        "file": file,
        "state": "failed" if problems else "verified-arm64",
        "problems": problems,
        "tolerance": tol.describe(),
        "golden": _figures(figures, file, m.cpu) if figures else None,
        "delegate": _delegate_counts(delegate, file, m.cpu),
        "versions": res["versions"],
        "guest": res["host"],
    }


def _encode(io: dict, x: np.ndarray) -> np.ndarray:
    """Golden inputs as the file takes them (model.json's quantization for int8 inputs)."""
    from targets.tflite import quantize_io

    q = io["inputs"][0].get("quantization")
    x = np.ascontiguousarray(x, dtype=np.float32)
    return quantize_io(x, q["scale"], q["zero_point"]) if q else x


def _decode(io: dict, y: np.ndarray) -> np.ndarray:
    from targets.tflite import dequantize_io

    q = io["outputs"][0].get("quantization")
    return dequantize_io(y, q["scale"], q["zero_point"]) if q else y


def _figures(f: dict, file: str, cpu: str) -> dict:
    on = (
        f"{file} on aarch64 (qemu, {cpu}) vs its golden outputs from this host, "
        f"{f['inputs']} golden inputs"
    )
    units = {"max_abs_diff": "logit", "max_abs_diff_rel": "ratio", "top1_agreement": "fraction"}
    out = {k: measured(f[k], u, on) for k, u in units.items()}
    # identical outputs have infinite SQNR, which JSON cannot hold
    out["sqnr_db"] = measured(f["sqnr_db"], "dB", on) if np.isfinite(f["sqnr_db"]) else None
    out["identical"] = f["max_abs_diff"] == 0.0
    return out


_DELEGATE_COUNTS = {  # the delegate evidence's counts -> unit
    "file_nodes": "nodes in the file",
    "delegate_nodes": "delegate nodes after allocation",
    "delegated_file_nodes": "file nodes the delegate took",
    "host_delegated_nodes": "file nodes the delegate took on this host (preflight)",
    "delegate_calls": "DELEGATE_CALL events",
    "executions": "executions",
    "xnnpack_ops_run": "XNNPACK operator events",
}


def _delegate_counts(d: dict, file: str, cpu: str) -> dict:
    """The evidence that the ARM delegate ran, its counts as counted figures."""
    on = f"{file} on aarch64 (qemu, {cpu}): the runtime's own record of the run"
    out = {
        k: counted(v, _DELEGATE_COUNTS[k], on) if k in _DELEGATE_COUNTS else v for k, v in d.items()
    }
    if out.get("host_delegated_nodes") is not None:  # counted on this host, at export
        out["host_delegated_nodes"]["on"] = f"{file} on this host: the export's preflight"
    if "file_delegates" in d:
        out["file_delegates"] = {
            k: counted(n, "delegate blobs in the file", file)
            for k, n in d["file_delegates"].items()
        }
    return out


# ---------------------------------------------------------------------------------------------
# the block recorded in report.json


def _summary(files: dict, machine: dict, n_inputs: int) -> dict:
    problems = [p for f in files.values() for p in f["problems"]]
    ran = [f for f in files.values() if f["state"] != "not-run"]
    if not ran:
        problems.append("no file of the bundle has an aarch64 runtime to run on")
    versions, guest = {}, {}
    for f in ran:
        versions.update(f.get("versions") or {})
        guest = f.get("guest") or guest
    return {
        "state": "failed" if problems else "verified-arm64",
        "ok": not problems,
        "checked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "proves": PROVES,
        "does_not_prove": DOES_NOT,
        "machine": {**machine, **{f"guest_{k}": v for k, v in guest.items()}},
        "inputs": f"golden.npz: {n_inputs} test images, run one at a time",
        "versions": versions,
        "versions_differ_from_host": _differences(versions),
        "files": files,
        "problems": problems,
    }


def _differences(arm: dict) -> dict:
    host = {**library_versions(), "numpy": np.__version__}
    out = {}
    for lib, v in arm.items():
        if lib in host and host[lib] != v:
            same = host[lib].split("+")[0] == v.split("+")[0]
            out[lib] = {
                "host": host[lib],
                "arm64": v,
                "note": ("same release, another build" if same else "another release")
                + (NOTES.get(lib, "") if same else ""),
            }
    return out


NOTES = {
    "torch": (
        "; the only aarch64 build of this torch on PyPI is the CUDA one. Here torch "
        "only hands tensors to the ExecuTorch runtime (whose Python bindings are built "
        "against this torch release); CUDA is never initialised"
    )
}


def _record(bundle: Path, report: dict, block: dict) -> None:
    """Into report.json (and report.html, and their manifest entries): the block, each
    backend's state, and the problems; `ok` stays "no problems"."""
    report["arm64"] = block
    for name, f in block["files"].items():
        if name in report["backends"]:
            report["backends"][name]["arm64"] = {"state": f["state"], "problems": f["problems"]}
    report["problems"] = [p for p in report["problems"] if not p.startswith("arm64: ")] + [
        f"arm64: {p}" for p in block["problems"]
    ]
    report["ok"] = not report["problems"]
    write_json(bundle / "report.json", report)
    write_bytes(bundle / "report.html", report_html.render(report).encode())
    manifest = json.loads((bundle / "manifest.json").read_text())
    changed = {"report.json", "report.html"}
    manifest["files"] = [
        file_record(bundle / f["path"], bundle) if f["path"] in changed else f
        for f in manifest["files"]
    ]
    write_json(bundle / "manifest.json", manifest)


def table(block: dict) -> str:
    rows = [("file", "arm64", "max |diff|", "top-1", "delegate")]
    for f in block["files"].values():
        g, d = f.get("golden") or {}, f.get("delegate") or {}
        rows.append(
            (
                f["file"],
                f["state"],
                f"{g['max_abs_diff']['value']:.3g}" if g else "",
                f"{g['top1_agreement']['value']:.3f}" if g else "",
                _delegate_line(d) if d else f.get("why_not_run", ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    m = block["machine"]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(
        f"on {m.get('guest_machine', 'aarch64')} under {m['emulator']}, "
        f"-cpu {m['cpu']} ({', '.join(m.get('guest_hwcaps', []))}); "
        + ", ".join(f"{k} {v}" for k, v in block["versions"].items())
    )
    return "\n".join(lines)


def _delegate_line(d: dict) -> str:
    n = lambda k: d[k]["value"]
    if "xnnpack_kernels" in d:
        return f"XNNPACK: {n('xnnpack_ops_run')} ops in {n('delegate_calls')} delegate call(s)"
    if "delegate_nodes" in d:
        return f"XNNPACK: {n('delegated_file_nodes')}/{n('file_nodes')} nodes"
    return ", ".join(d.get("providers", []))
