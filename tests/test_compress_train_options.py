"""Issue 6's options through `compress`, on digits: sparsity training, feature distillation,
quantization-aware training, a per-backend quantization scheme, a zoo teacher and a student of
another architecture; and invalid values exit 2 naming the key."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

import cli


def run(root, *args):
    return CliRunner().invoke(
        cli.cli,
        [
            "compress",
            "--target",
            "android",
            "--out",
            str(root / "dist"),
            "--run-dir",
            str(root / "run"),
            *args,
        ],
    )


@pytest.mark.slow
def test_sparsity_training_hints_qat_and_a_per_backend_scheme(tmp_path, every_number_sourced):
    result = run(
        tmp_path,
        "--epochs",
        "6",
        "--distill-epochs",
        "4",
        "--group-lasso",
        "1e-3",
        "--targeted-dropout",
        "0.3",
        "--feature-weight",
        "1",
        "--qat-epochs",
        "1",
        "--precision",
        "tflite=fp32",
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads((tmp_path / "dist" / "android" / "report.json").read_text())
    st = report["stages"]
    assert "group lasso" in st["teacher"]["sparsity_training"]["summary"]
    assert "targeted dropout 0.3" in st["teacher"]["sparsity_training"]["summary"]
    assert st["distilled"]["feature_hints"] == ["features.4.0 <- features.4.0"]
    et, tfl = report["backends"]["executorch-xnnpack"], report["backends"]["tflite"]
    assert et["qat"]["settings"]["epochs"] == 1 and et["calibration"] is None
    every_number_sourced(report)
    assert "quantization-aware training, 1 epochs" in result.output
    assert tfl["precision"] == "fp32" and tfl["calibration"] is None
    for b in (et, tfl):
        assert b["parity"]["state"] == "verified"
        assert b["parity"]["file_accuracy"]["value"] >= 0.9
    # the int8 .pte against the fp32 .tflite of the same student
    assert et["bytes"]["value"] < 0.5 * tfl["bytes"]["value"]
    # a saved teacher is a plain module again (no dropout parametrization left in it)
    saved = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert not any("parametrizations" in f["path"] for f in saved["stages"]["train"]["files"])
    check_temperature_folded(tmp_path, report)


def check_temperature_folded(root, report):
    """The default, calibrate.apply: always: the fitted T is folded, and the fp32 .tflite emits the distilled
    student's logits / T (issue 12): what the file outputs is the scaled model, and its NLL is
    the one the report gives for the scaled student."""
    from pipeline.checkpoint import load_model
    from pipeline.confidence import metrics
    from pipeline.data import load_dataset
    from pipeline.train import predict

    t = report["stages"]["temperature"]
    applied = t["temperature_applied"]["value"]
    assert t["folded"] and applied == t["temperature_fitted"]["value"] != 1.0
    meta = json.loads((root / "dist" / "android" / "model.json").read_text())["temperature"]
    assert meta["folded"] and meta["temperature_applied"] == applied
    distilled, _, _ = load_model(root / "run" / "distill")  # before the fold
    d = load_dataset("digits")
    scaled = predict(distilled, d.x_test) / applied
    out = np.load(root / "run" / "verify" / "tflite-fp32" / "outputs.npz")["test"]
    assert np.abs(out - scaled).max() <= 1e-4 * np.abs(scaled).max()
    assert metrics(out, d.y_test)["nll"] == pytest.approx(
        t["after_fitted"]["nll"]["value"], abs=1e-5
    )


@pytest.mark.slow
def test_a_zoo_student_of_another_architecture_from_a_zoo_teacher(
    tmp_path, android_bundle, every_number_sourced
):
    """MobileNet-from-ResNet in small: a resnet20 student distilled (with feature hints between
    differently named layers) from the small_cnn teacher of the shared run, loaded by weights."""
    teacher = android_bundle["run"] / "train" / "model.safetensors"
    result = run(
        tmp_path,
        "--weights",
        str(teacher),
        "--student-model",
        "resnet20",
        "--teacher-model",
        "small_cnn",
        "--teacher-weights",
        str(teacher),
        "--feature-weight",
        "0.5",
        "--feature-layer",
        "layers.8.conv2:features.4.0",
        "--distill-epochs",
        "6",
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "not pruning: the student is resnet20" in result.output
    b = tmp_path / "dist" / "android"
    report = json.loads((b / "report.json").read_text())
    assert report["model"]["name"] == "resnet20" and report["teacher_model"] == "small_cnn"
    assert report["stages"]["pruned"]["student_model"] == "resnet20"
    every_number_sourced(report)
    assert report["stages"]["distilled"]["teacher"].startswith("small_cnn (")
    assert report["stages"]["distilled"]["feature_hints"] == ["layers.8.conv2 <- features.4.0"]
    assert report["stages"]["distilled"]["accuracy"]["value"] >= 0.85
    assert json.loads((b / "model.json").read_text())["model"] == "resnet20"
    for name in ("executorch-xnnpack", "tflite"):
        assert report["backends"][name]["parity"]["state"] == "verified", name


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--temperature", "0"], r"^error: recipe key distill.temperature must be > 0"),
        (["--alpha", "-0.1"], r"^error: recipe key distill.alpha must be in \[0, 1\]"),
        (
            ["--precision", "tflite=int4"],
            r"^error: recipe key quantize.precision.tflite: unknown scheme 'int4'; available: fp32, int8",
        ),
        (
            ["--precision", "coreml=palettize6"],
            r"^error: recipe key quantize.precision.coreml: target android has no such backend",
        ),
        (["--precision", "tflite"], r"^error: --precision tflite: expected NAME=VALUE"),
        (
            ["--qat-epochs", "2", "--precision", "executorch-xnnpack=fp32"],
            r"^error: recipe key quantize.qat_epochs: quantization-aware training is for ExecuTorch int8",
        ),
        (["--qat-epochs", "-1"], r"^error: recipe key quantize.qat_epochs must be >= 0"),
        (
            ["--targeted-dropout", "1"],
            r"^error: recipe key train.targeted_dropout must be in \[0, 1\)",
        ),
        (["--group-lasso", "-1"], r"^error: recipe key train.group_lasso must be >= 0"),
        (["--bn-l1", "-1"], r"^error: recipe key train.bn_l1 must be >= 0"),
        (["--dropout", "1.5"], r"^error: recipe key train.dropout must be in \[0, 1\)"),
        (
            ["--targeted-fraction", "0"],
            r"^error: recipe key train.targeted_fraction must be in \(0, 1\]",
        ),
        (["--student-model", "nosuch"], r"^error: recipe key distill.student_model: unknown model"),
        (
            ["--teacher-model", "resnet20"],
            r"^error: recipe keys distill.teacher_model and distill.teacher_weights go together",
        ),
        (
            ["--teacher-model", "resnet20", "--teacher-weights", "no/such.safetensors"],
            r"^error: recipe key distill.teacher_weights: no such file",
        ),
        (["--feature-weight", "-1"], r"^error: recipe key distill.feature_weight must be >= 0"),
        (["--feature-layer", "a:b:c"], r"^error: recipe key distill.feature_layers: 'a:b:c'"),
        (
            ["--student-model", "resnet20", "--sparsity", "0.5"],
            r"^error: recipe key prune.sparsity: the student is another architecture",
        ),
    ],
)
def test_invalid_options_exit_2_naming_the_key(tmp_path, args, pattern):
    result = run(tmp_path, *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and re.match(pattern, lines[0]), result.output
    assert not (tmp_path / "dist").exists() and not (tmp_path / "run").exists()
