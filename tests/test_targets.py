"""Every target builds its bundle; every backend's file is verified (or, for Core ML on Linux,
structurally checked and said so)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from click.testing import CliRunner

import cli
from targets import get_backend, get_target, list_backends, list_targets


def test_targets_are_data_naming_known_backends_and_devices():
    from targets.devices import list_devices

    assert {"android", "ios", "linux-arm64", "all"} <= set(list_targets())
    for name in list_targets():
        t = get_target(name)
        for choice in t.backends:
            assert choice.backend in list_backends()
            assert choice.precision in get_backend(choice.backend).precisions
        assert set(t.devices) <= set(list_devices())


@pytest.fixture(scope="module")
def all_run(android_bundle, tmp_path_factory):
    """The android run's train/prune/distill reused; `--target all` adds Core ML and ONNX."""
    root = tmp_path_factory.mktemp("all")
    shutil.copytree(android_bundle["run"], root / "run")
    return root


def _compress(root, target):
    return CliRunner().invoke(
        cli.cli,
        [
            "compress",
            "--target",
            target,
            "--out",
            str(root / "out"),
            "--run-dir",
            str(root / "run"),
            "--epochs",
            "10",
            "--distill-epochs",
            "8",
        ],
    )


def test_target_all_writes_and_verifies_every_backend(all_run, every_number_sourced):
    result = _compress(all_run, "all")
    assert result.exit_code == 0, result.output
    bundle = all_run / "out" / "all"
    for f in ("model.pte", "model.tflite", "model.onnx", "model.mlpackage", "README.md"):
        assert (bundle / f).exists(), f
    report = json.loads((bundle / "report.json").read_text())
    states = {k: v["parity"]["state"] for k, v in report["backends"].items()}
    mac = sys.platform == "darwin"
    assert states == {
        "executorch-xnnpack": "verified",
        "tflite": "verified",
        "onnx": "verified",
        "coreml": "verified" if mac else "structurally-checked-only",
    }
    if not mac:  # never "verified" for a file that was not run
        coreml = report["backends"]["coreml"]
        assert "macOS" in coreml["parity"]["why_not_run"] and coreml["latency"] is None
        assert coreml["parity"]["structure"]["file_ops"]
    for name in ("tflite", "onnx"):
        assert report["backends"][name]["preflight"]["file_ops"]
    every_number_sourced(report)  # Core ML's structure and ONNX's preflight too
    readme = (bundle / "README.md").read_text()
    for api in (
        "Module.load(",
        "EValue.from(",
        "import ExecuTorch",
        "Tensor<Float>(",
        "org.tensorflow.lite.Interpreter",
        "MLModel(contentsOf:",
        "OrtEnvironment",
    ):
        assert api in readme, api


@pytest.mark.parametrize(
    "target, files",
    [
        ("ios", {"model.mlpackage", "model.pte"}),
        ("linux-arm64", {"model.pte", "model.tflite", "model.onnx"}),
    ],
)
def test_ios_and_linux_arm64(all_run, target, files):
    result = _compress(all_run, target)
    assert result.exit_code == 0, result.output
    bundle = all_run / "out" / target
    model_files = {p.name for p in bundle.iterdir() if p.name.startswith("model.")} - {"model.json"}
    assert model_files == files
    meta = json.loads((bundle / "model.json").read_text())
    assert set(meta["backends"]) == {c.backend for c in get_target(target).backends}


def test_an_op_xnnpack_does_not_take_shows_in_the_preflight(tmp_path):
    """x.mean((2, 3)) without keepdim stays on portable kernels: the preflight must say so."""
    import torch
    from torch import nn

    from targets._base import ExportRequest

    class MeanHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8, 10)

        def forward(self, x):  # (B, 1, 8, 8)
            return self.fc(self.conv(x).mean((2, 3)))  # mean without keepdim: not delegated

    exp = get_backend("executorch-xnnpack").export(
        ExportRequest(MeanHead().eval(), torch.zeros(1, 1, 8, 8), "fp32", None, tmp_path)
    )
    pre = exp.preflight
    assert pre["delegated_fraction"] < 1.0
    assert any("mean" in op for op in pre["non_delegated_ops"]), pre
