"""report + bundle: report.json from every stage's info (each figure measured, estimated or
counted), the budgets checked against it, and the bundle published as a whole."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

from ground.log import log
from pipeline import bundle, confidence, report_figures
from pipeline.gate import evaluate
from pipeline.profile import host
from pipeline.report import counted, parity_figures, summary_table
from pipeline.rundir import library_versions
from pipeline.stages._job import Job

NAME = "report"  # not a run-directory stage: it writes the bundle, every run


def publish(job: Job, opts, target, stages: dict, backends: dict, shipped: dict) -> dict:
    """Write OUT/<target>/ (report, files, golden data) and print the summary table."""
    report = build(job, opts.seed, target, stages, backends, shipped)
    verified = report["ok"]  # every file exported and verified (budgets aside)
    if opts.budgets is not None:
        report["gate"] = evaluate(report, opts.budgets)
        broken = [ln["name"] for ln in report["gate"] if ln["verdict"] == "fail"]
        if broken:
            report["ok"] = False
            report["problems"].append(f"budget broken: {', '.join(broken)}")
    dest = Path(opts.out) / target.name
    if not verified and bundle.is_bundle(dest):  # a good bundle is not replaced by a broken one
        dest = dest.with_name(f"{dest.name}.failed")
        log(f"not replacing {dest.with_suffix('')}: this run's files did not all export and verify")
    out = bundle.publish(dest, report, backends, job.data, shipped)
    log(f"bundle written to {out}")
    print(summary_table(report))
    return report


def build(job: Job, seed: int, target, stages: dict, backends: dict, shipped: dict) -> dict:
    data = job.data
    out, problems = {}, []
    for name, r in backends.items():
        out[name], problem = _backend(r, stages["distilled"], len(data.y_test))
        problems += [f"{name}{problem}"] if problem else []
    return {
        "slimship_report": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": target.name,
        "model": shipped,
        "host": report_figures.host(host()),
        "versions": library_versions(),
        "data": {
            "name": data.name,
            "fingerprint": job.fingerprint,
            **({"notes": data.notes} if data.notes else {}),
            **{
                k: counted(len(y), "images", f"{k} split of {data.name}")
                for k, y in (("train", data.y_train), ("val", data.y_val), ("test", data.y_test))
            },
        },
        "recipe": job.recipe.to_dict(),
        "seed": seed,
        "stages": report_figures.stages(stages, data, job.recipe),
        "backends": out,
        "ok": not problems,
        "problems": problems,
        "teacher_model": job.spec["name"],
    }


def _backend(r: dict, student: dict, n_test: int) -> tuple[dict, str | None]:
    """One backend's block, and its problem (after the backend's name) if it has one."""
    if "error" in r:
        return {"precision": r["precision"], "error": r["error"]}, f": export failed: {r['error']}"
    e, v, p = r["export"].info, r["verify"].info, r["profile"].info
    path, file = r["export"].dir / e["file"], e["file"]
    on_test = f"{file}, {n_test} test images"
    block = {
        "file": file,
        "precision": e["precision"],
        "bytes": counted(_size(path), "bytes", file),
        # the model the file was exported from (the calibrated student: same graph)
        "macs": {**student["macs"], "on": f"{file}'s model, " + student["macs"]["on"]},
        "params": {**student["params"], "on": f"{file}'s model, " + student["params"]["on"]},
        # what an app store download sees; unstructured zeros shrink this, not `bytes`
        "bytes_compressed": counted(_compressed_size(path), "bytes", f"{file}, zlib level 9"),
        "parity": _parity(v, file),
        "preflight": report_figures.preflight(e["preflight"], file),
        "io": e["io"],
        "calibration": report_figures.calibration_images(e["calibration"], file),
        "qat": report_figures.qat(e.get("qat")),
        "latency": report_figures.latency(p["latency"]),
        "memory": report_figures.memory(p.get("memory")),
        "estimates": report_figures.estimates(p.get("estimates")),
        "op_breakdown": report_figures.op_breakdown(p.get("op_breakdown")),
        "reused": {"export": r["export"].reused, "verify": r["verify"].reused},
        "calibration_metrics": confidence.figures(v["calibration"], on_test)
        if "calibration" in v
        else None,
        "reliability_data": confidence.reliability_data(v.get("calibration"), on_test),
    }
    if v["state"] != "failed":
        return block, None
    where = v.get("first_divergence", {}).get("problem")
    return block, (
        f" ({e['file']}): parity failed: {'; '.join(v['problems'])}"
        + (f"; {where}" if where else "")
    )


def _parity(v: dict, file: str) -> dict:
    if "test_split" not in v:
        return report_figures.structural_parity(v, file)
    out = parity_figures(v, file)
    if "first_divergence" in v:
        out["first_divergence"] = report_figures.first_divergence(v["first_divergence"], file)
    return out


def _compressed_size(path: Path) -> int:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return sum(len(zlib.compress(p.read_bytes(), 9)) for p in files)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
