"""`cli.py profile` measures existing files; bad files and wrong shapes are one-line errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import cli


def test_profile_existing_files(android_bundle, tmp_path):
    b = android_bundle["bundle"]
    out = tmp_path / "p.json"
    result = CliRunner().invoke(
        cli.cli,
        [
            "profile",
            str(b / "model.pte"),
            str(b / "model.tflite"),
            "--runs",
            "20",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [r["backend"] for r in rows] == ["executorch-xnnpack", "tflite"]
    for r in rows:
        assert r["input_shape"] == [1, 1, 8, 8] and r["latency"]["p50"]["source"] == "measured"


@pytest.mark.parametrize(
    "make, pattern",
    [
        (
            lambda d, b: (d / "model.pte").write_bytes((b / "model.pte").read_bytes()[:2000]),
            "not a readable .pte file",
        ),
        (
            lambda d, b: (d / "model.tflite").write_bytes(b"hello, not a model"),
            "not a readable .tflite file",
        ),
        (lambda d, b: (d / "model.onnx").write_bytes(b"\x00" * 64), "not a readable .onnx file"),
        (lambda d, b: (d / "notes.txt").write_text("x"), "unknown model file type .txt"),
    ],
)
def test_a_truncated_or_non_model_file_is_one_line(android_bundle, tmp_path, make, pattern):
    make(tmp_path, android_bundle["bundle"])
    (f,) = list(tmp_path.iterdir())
    result = CliRunner().invoke(cli.cli, ["profile", str(f)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and pattern in lines[-1], result.output
    assert sum(ln.startswith("error:") for ln in lines) == 1


def test_a_wrong_input_shape_is_one_line(android_bundle):
    result = CliRunner().invoke(
        cli.cli,
        ["profile", str(android_bundle["bundle"] / "model.pte"), "--input-shape", "1x3x32x32"],
    )
    assert result.exit_code == 2
    assert "does not match the file's input 1x1x8x8" in result.output
