"""The whole command through click, and the bundle read the way an app engineer would."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from pipeline.rundir import sha256_file


def test_bundle_has_every_file_and_a_true_manifest(android_bundle):
    b = android_bundle["bundle"]
    names = {p.name for p in b.iterdir()}
    assert {
        "model.pte",
        "model.tflite",
        "model.json",
        "golden.npz",
        "report.json",
        "manifest.json",
    } <= names
    manifest = json.loads((b / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    assert listed == names - {"manifest.json"}
    for f in manifest["files"]:
        assert sha256_file(b / f["path"]) == f["sha256"]
        assert (b / f["path"]).stat().st_size == f["bytes"]
    # no partial or temporary folders left beside the bundle
    assert [p.name for p in b.parent.iterdir()] == ["android"]


def test_report_figures_say_where_they_came_from(android_bundle, every_number_sourced):
    report = json.loads((android_bundle["bundle"] / "report.json").read_text())
    assert report["ok"] and report["problems"] == []
    # the whole report, no key exempt but the declared inputs (tests/conftest.py)
    every_number_sourced(report)
    teacher = report["stages"]["teacher"]
    assert teacher["accuracy"]["value"] >= 0.9
    assert report["stages"]["distilled"]["macs"]["value"] <= 0.5 * teacher["macs"]["value"]
    for name in ("executorch-xnnpack", "tflite"):
        b = report["backends"][name]
        assert b["parity"]["state"] == "verified" and b["precision"] == "int8"
        assert b["parity"]["file_accuracy"]["value"] >= teacher["accuracy"]["value"] - 0.03
        lat = b["latency"][0]
        assert lat["settings"]["runs"] >= 20 and lat["p50"]["source"] == "measured"
        assert lat["p50"]["value"] <= lat["p90"]["value"]
    et = report["backends"]["executorch-xnnpack"]
    assert et["preflight"]["delegated_fraction"]["value"] == 1.0
    # issue 5: memory measured in a fresh process, the plan counted, real op names profiled,
    # estimates per device profile of the target with the estimator's measured error beside
    assert (
        et["memory"]["peak_rss"]["source"] == "measured" and et["memory"]["peak_rss"]["value"] > 0
    )
    assert et["memory"]["planned_bytes"]["source"] == "counted"
    for b in report["backends"].values():  # counted per file, not only per stage
        assert b["macs"]["value"] == report["stages"]["distilled"]["macs"]["value"]
        assert b["params"]["source"] == b["macs"]["source"] == "counted"
        assert b["latency"][0]["load"]["source"] == "measured"  # cold start apart
        assert b["memory"]["peak_rss"]["source"] == "measured"
    names = {r["name"] for r in et["op_breakdown"]["rows"]}
    assert "Method::execute" in names and len(names) > 1
    for dev in ("pixel-8", "galaxy-s24", "cortex-a55"):
        est = report["backends"]["tflite"]["estimates"][dev]
        assert est["latency"]["1"]["latency"]["source"] == "estimated"
        assert est["energy"]["source"] == "estimated" and est["energy"]["unit"] == "mJ"
        assert est["estimator_error"]["median_abs_error"]["source"] == "measured"


@pytest.mark.parametrize(
    "where",
    [
        ("stages", "teacher", "final_loss"),  # a figure replaced by its bare value
        ("backends", "tflite", "latency", 0, "extra_ms"),  # a number added beside figures
        ("stages", "pruned", "widths", "after", "extra"),
    ],
)
def test_a_bare_number_anywhere_fails_the_walk(android_bundle, every_number_sourced, where):
    report = json.loads((android_bundle["bundle"] / "report.json").read_text())
    node = report
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = 0.25
    with pytest.raises(AssertionError, match="bare number 0.25"):
        every_number_sourced(report)
    # a figure that does not say what it was measured on fails too
    report = json.loads((android_bundle["bundle"] / "report.json").read_text())
    del report["stages"]["temperature"]["temperature_fitted"]["on"]
    with pytest.raises(AssertionError, match="no 'on'"):
        every_number_sourced(report)


def test_pte_reproduces_golden_from_the_bundle_alone(android_bundle):
    """What an app engineer does: model.json + model.pte + executorch.runtime, nothing else."""
    import torch
    from executorch.runtime import Runtime

    b = android_bundle["bundle"]
    meta = json.loads((b / "model.json").read_text())
    entry = meta["backends"]["executorch-xnnpack"]
    golden = np.load(b / "golden.npz")
    method = Runtime.get().load_program(b / entry["file"]).load_method("forward")
    shape = meta["inputs"][0]["shape"]
    for x, want in zip(golden["x"], golden[entry["golden_key"]]):
        got = method.execute([torch.from_numpy(x.reshape(shape).copy())])[0].numpy()
        np.testing.assert_array_equal(got[0], want)


def test_tflite_reproduces_golden_from_the_bundle_alone(android_bundle):
    """model.json + model.tflite + ai_edge_litert: quantize the input with the file's own
    scale and zero point as model.json says, dequantize the output."""
    from ai_edge_litert.interpreter import Interpreter

    b = android_bundle["bundle"]
    meta = json.loads((b / "model.json").read_text())
    entry = meta["backends"]["tflite"]
    golden = np.load(b / "golden.npz")
    interp = Interpreter(model_path=str(b / entry["file"]))
    runner = interp.get_signature_runner(entry["io"]["signature"])
    (inp,), (out,) = entry["io"]["inputs"], entry["io"]["outputs"]
    assert inp["dtype"] == "int8" and inp["layout"] == "NCHW"
    for x, want in zip(golden["x"], golden[entry["golden_key"]]):
        q = inp["quantization"]
        xi = np.clip(np.round(x[None] / q["scale"]) + q["zero_point"], -128, 127).astype(np.int8)
        y = runner(**{inp["name"]: xi})[out["name"]]
        o = out["quantization"]
        got = (y.astype(np.float32) - o["zero_point"]) * o["scale"]
        np.testing.assert_allclose(got[0], want, atol=1e-6)


def test_rerun_reuses_every_stage(android_bundle):
    root = android_bundle["root"]
    result = CliRunner().invoke(
        cli.cli,
        [
            "compress",
            "--target",
            "android",
            "--out",
            str(root / "dist2"),
            "--run-dir",
            str(android_bundle["run"]),
            "--epochs",
            "10",
            "--distill-epochs",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    for stage in (
        "train",
        "prune",
        "distill",
        "export/executorch-xnnpack-int8",
        "verify/tflite-int8",
    ):
        assert f"[{stage}] reused" in result.output
    a = json.loads((android_bundle["bundle"] / "model.json").read_text())
    b = json.loads((root / "dist2" / "android" / "model.json").read_text())
    assert (
        a["backends"]["executorch-xnnpack"]["sha256"]
        == b["backends"]["executorch-xnnpack"]["sha256"]
    )


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--target", "nosuch"], r"^error: unknown target 'nosuch'; available: .*android"),
        (
            ["--target", "android", "--data", "no/such/dir"],
            r"^error: --data no/such/dir: no such file",
        ),
        (
            ["--target", "android", "--model", "nosuch"],
            r"^error: unknown model 'nosuch'; available: ",
        ),
        (["--target", "android", "--alpha", "2"], r"^error: recipe key distill.alpha"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, pattern):
    out, run = tmp_path / "out", tmp_path / "run"
    result = CliRunner().invoke(
        cli.cli, ["compress", *args, "--out", str(out), "--run-dir", str(run)]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and re.match(pattern, lines[0]), result.output
    assert not out.exists()


def test_listing_commands():
    runner = CliRunner()
    targets = runner.invoke(cli.cli, ["targets"])
    assert targets.exit_code == 0 and "executorch-xnnpack" in targets.output
    models = runner.invoke(cli.cli, ["models"])
    assert models.exit_code == 0 and "small_cnn" in models.output


def test_readme_names_every_command_and_option():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert readme.splitlines()[0] == "# slimship"
    assert "make demo" in readme and "make test" in readme
    for name, cmd in cli.cli.commands.items():
        assert f"cli.py {name}" in readme, name
        for p in cmd.params:
            for opt in p.opts:
                if opt.startswith("--"):
                    assert f"`{opt}`" in readme, f"{name} {opt}"


def test_calibration_is_reported_per_stage_and_per_file(android_bundle):
    b = android_bundle["bundle"]
    report = json.loads((b / "report.json").read_text())
    for stage in ("teacher", "pruned", "distilled"):
        cal = report["stages"][stage]["calibration"]
        assert {"ece", "nll", "brier"} <= set(cal) and cal["ece"]["source"] == "measured"
    t = report["stages"]["temperature"]
    applied, fitted = t["temperature_applied"], t["temperature_fitted"]
    assert applied["source"] == fitted["source"] == "measured"
    assert "validation images" in fitted["on"]
    assert abs(t["temperature"]["value"] - applied["value"]) < 1e-6
    assert applied["value"] > 0
    # the default (calibrate.apply: always) folds the fitted T
    assert applied["value"] == fitted["value"]
    # the NLL change the fitted T makes on the test split, with its noise beside it
    ch = t["nll_change"]
    assert ch["source"] == "measured" and ch["standard_error"] > 0
    assert ch["value"] == pytest.approx(
        t["after_fitted"]["nll"]["value"] - t["before"]["nll"]["value"], abs=1e-5
    )
    for name in ("executorch-xnnpack", "tflite"):
        assert report["backends"][name]["calibration_metrics"]["ece"]["unit"].startswith("ECE")
    meta = json.loads((b / "model.json").read_text())
    assert meta["temperature"]["temperature_applied"] == applied["value"]
    assert meta["temperature"]["folded"] == (applied["value"] != 1.0)


def test_bundle_has_the_modes_the_umask_gives(android_bundle):
    """Not the 0o600/0o700 of the temporary files and folder it is assembled in: the app team's
    CI and other users must be able to read the bundle."""
    import stat

    from pipeline.rundir import umask_mode

    b = android_bundle["bundle"]
    for p in [b, *b.rglob("*")]:
        assert stat.S_IMODE(p.stat().st_mode) == umask_mode(directory=p.is_dir()), p
