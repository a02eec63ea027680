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
    # estimates per device profile of the target (their validation: issue 28, the next test)
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
    for est in report["backends"]["tflite"]["estimates"].values():
        assert est["energy"]["source"] == "estimated" and est["energy"]["unit"] == "mJ"


def test_device_estimates_hold_no_host_time_and_say_how_they_were_validated(android_bundle):
    """Issue 28, check 2, on the default android bundle: every device estimate is the sum of the
    device model's parts (compute, memory, the runtime's own per-operator and per-call costs, in
    cycles of the device: nothing of this host's Python runner), and shows its value to 2
    significant digits, a p10-p90 range, the validated error and its published rows, or
    `unvalidated` and the nearest validated device's error; report.html and the README say so."""
    from pipeline.estimate import device_model as D
    from pipeline.estimate import load_device_fit, load_host_fit
    from pipeline.estimate.device_fit import RUNTIME
    from targets import get_target
    from targets.devices import get_device

    bundle = android_bundle["bundle"]
    report = json.loads((bundle / "report.json").read_text())
    readme, page = (bundle / "README.md").read_text(), (bundle / "report.html").read_text()
    fit, host_call = load_device_fit(), min(load_host_fit().call_overhead_ms.values())
    devices = get_target("android").devices
    for b in report["backends"].values():
        assert set(b["estimates"]) == set(devices)
        for dev, est in b["estimates"].items():
            val = est["validation"]
            _shows_its_validation(val, dev, fit)
            for t, block in est["latency"].items():
                lat = block["latency"]
                assert lat["source"] == "estimated" and lat["value"] == float(f"{lat['value']:.2g}")
                parts = ("compute_bound_ms", "memory_bound_ms", "overhead", "per_call")
                assert sum(block[k]["value"] for k in parts) == pytest.approx(
                    lat["value"], rel=0.05
                )
                first = D.placement(get_device(dev), int(t)).first_ghz
                call = fit.runtimes[RUNTIME]["call_kcycles"] / first * 1e-3
                assert block["per_call"]["value"] == pytest.approx(  # figures: 6 decimals
                    call * fit.device_factor.get(dev, 1.0), abs=1e-6
                )
                assert block["per_call"]["value"] < host_call  # the host runner's is not in it
                lo, hi = block["range"]["value"]
                assert block["range"]["source"] == "estimated" and 0 < lo <= hi
                assert block["validation"] == val["state"]
                assert block["validated_error"] == val["median_abs_error"]
                assert block["validated_rows"] == val["rows"]
                words = f"on {dev}, {t} thread(s)"
                assert words in readme and words in page
    assert "unvalidated" in readme and "nearest validated device" in readme
    assert "unvalidated" in page and "nearest validated device" in page


def _shows_its_validation(val: dict, dev: str, fit) -> None:
    """The error an estimate was validated with, or `unvalidated` and whose error it shows."""
    assert val["median_abs_error"]["source"] == "measured" and val["rows"]["value"] > 0
    assert val["p10_error"]["value"] <= val["p90_error"]["value"]
    if dev in fit.validation["by_device"]:
        assert val["state"] == "validated" and val["rests_on"] == dev
    else:  # the default phones have no published rows
        assert val["state"] == "unvalidated" and val["rests_on"] in fit.validation["by_device"]
        assert val["rests_on"] in val["note"] and "new_device" in val


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
