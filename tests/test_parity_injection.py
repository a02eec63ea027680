"""A wrong export must fail the run, name the backend and, for ExecuTorch, the first layer
whose output departs from PyTorch."""

from __future__ import annotations

import json
import shutil

import torch
from click.testing import CliRunner

import cli
from targets.executorch_xnnpack import ExecuTorchXnnpack


def negate_third_conv_weight(ep):
    """What a lowering bug looks like: one conv's weights are wrong in the lowered program
    (the int8 weights when the program is quantized)."""
    sd = ep.state_dict
    quantized = any(v.dtype == torch.int8 for v in sd.values())
    names = [k for k, v in sd.items() if v.dim() == 4 and (v.dtype == torch.int8 or not quantized)]
    with torch.no_grad():
        sd[names[2]].neg_()


def test_perturbed_pte_fails_parity_and_names_the_layer(
    android_bundle, tmp_path, monkeypatch, every_number_sourced
):
    run = tmp_path / "run"
    shutil.copytree(android_bundle["run"], run)
    shutil.rmtree(run / "export" / "executorch-xnnpack-int8")  # make export run again
    real = ExecuTorchXnnpack._lower

    def wrong_lowering(ep):
        negate_third_conv_weight(ep)
        return real(ep)

    monkeypatch.setattr(ExecuTorchXnnpack, "_lower", staticmethod(wrong_lowering))
    result = CliRunner().invoke(
        cli.cli,
        [
            "compress",
            "--target",
            "android",
            "--out",
            str(tmp_path / "out"),
            "--run-dir",
            str(run),
            "--epochs",
            "10",
            "--distill-epochs",
            "8",
        ],
    )
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "executorch-xnnpack (model.pte): parity failed" in errors[0]
    # the third conv block of small_cnn is features.3 (features.2 is the max-pool)
    assert "first divergent layer: features.3" in errors[0], errors[0]
    report = json.loads((tmp_path / "out" / "android" / "report.json").read_text())
    assert not report["ok"]
    every_number_sourced(report)  # the layer-by-layer search too
    assert report["backends"]["executorch-xnnpack"]["parity"]["state"] == "failed"
    assert report["backends"]["tflite"]["parity"]["state"] == "verified"  # the others finish
    model_json = json.loads((tmp_path / "out" / "android" / "model.json").read_text())
    assert model_json["ok"] is False
