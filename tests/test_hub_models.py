"""`--model torchvision:NAME` and `--model timm:NAME` (issue 24): library architectures with the
head sized to the data's classes run compress end to end on an image folder (the bundled
handwritten digits as PNG files, which a few epochs can fit: an untrained network's int8 error
is chaos, not the toolchain's); an unknown name or data it cannot take is one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sklearn.datasets import load_digits

import cli
from models import create_model

ARCHS = [  # and torchvision:mobilenet_v2, at 224 on CIFAR-10 photos below
    "torchvision:resnet18",
    "torchvision:squeezenet1_1",
    "timm:resnet10t",
    "timm:mobilenetv3_small_050",
    "timm:efficientnet_b0",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """300 of the bundled digits as grayscale PNG files in class folders (read as RGB)."""
    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    for i, (img, y) in enumerate(zip(digits.images[:300], digits.target[:300])):
        (root / str(y)).mkdir(exist_ok=True)
        Image.fromarray((img * 16).clip(0, 255).astype(np.uint8)).save(root / str(y) / f"{i}.png")
    return root


def _compress(tmp_path, *args):
    return CliRunner().invoke(cli.cli, [
        "compress", "--target", "android", "--out", str(tmp_path / "out"),
        "--run-dir", str(tmp_path / "run"), *args,
    ])  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_a_library_architecture_compresses_end_to_end(arch, folder, tmp_path):
    result = _compress(
        tmp_path, "--model", arch, "--data", str(folder), "--input-size", "32",
        "--epochs", "3", "--distill-epochs", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:] + repr(result.exception)
    report = json.loads((tmp_path / "out" / "android" / "report.json").read_text())
    stages = report["stages"]
    assert stages["distilled"]["macs"]["value"] <= 0.55 * stages["teacher"]["macs"]["value"]
    assert {b["parity"]["state"] for b in report["backends"].values()} == {"verified"}
    model = json.loads((tmp_path / "out" / "android" / "model.json").read_text())
    assert model["outputs"][0]["shape"] == [1, 10] and model["model"] == arch
    # T folds into any classifier (squeezenet1_1's is a 1x1 conv before ReLU and pooling): the
    # verified files emit the scaled logits, and the app has no step to add
    assert model["temperature"]["folded"] is True
    assert model["temperature"]["app_divides_logits_by"] is None


@pytest.mark.slow
def test_mobilenet_v2_compresses_cifar10_photos_at_phone_resolution(cifar_photos, tmp_path):
    """Issue 24's first check on a small slice (benchmarks hold the larger one): PNG photos
    resized to 224x224, pruned, distilled, int8 .pte and .tflite verified and profiled."""
    result = _compress(
        tmp_path, "--model", "torchvision:mobilenet_v2", "--data", str(cifar_photos),
        "--input-size", "224", "--epochs", "1", "--distill-epochs", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:] + repr(result.exception)
    out = tmp_path / "out" / "android"
    report = json.loads((out / "report.json").read_text())
    assert set(report["backends"]) == {"executorch-xnnpack", "tflite"}
    for b in report["backends"].values():
        assert b["parity"]["state"] == "verified" and b["latency"][0]["p50"]["value"] > 0
    model = json.loads((out / "model.json").read_text())
    assert model["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert model["preprocessing"]["resize"]["center_crop"] == [224, 224]


@pytest.mark.parametrize(
    "arch,words",
    [
        ("torchvision:mobilenet_v9", "torchvision has no architecture 'mobilenet_v9'; close:"),
        ("timm:resnet10z", "timm has no architecture 'resnet10z'; close:"),
    ],
)
def test_an_unknown_library_architecture_is_one_line(arch, words, tmp_path):
    result = _compress(tmp_path, "--model", arch)
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and words in errors[0]
    assert not (tmp_path / "out").exists()


def test_a_torchvision_model_on_grayscale_data_is_one_line(tmp_path):
    result = _compress(tmp_path, "--model", "torchvision:resnet18", "--epochs", "1")
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "3-channel (RGB)" in errors[0]


@pytest.mark.parametrize("arch", ["torchvision:googlenet", "torchvision:inception_v3"])
def test_torchvision_models_with_auxiliary_heads_train_on_their_logits_alone(arch):
    size = 32 if arch.endswith("googlenet") else 75  # inception_v3 needs at least 75 px
    model = create_model(arch, 3, 10, size).train()
    out = model(torch.randn(2, 3, size, size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


def test_a_model_whose_modules_record_versions_reloads_from_its_safetensors(tmp_path):
    """torchvision's MNASNet refuses a state without its module version, which safetensors
    does not keep: the stages reload it with the versions the model records."""
    from pipeline.checkpoint import load_model, save_model

    spec = {"name": "torchvision:mnasnet0_5", "in_channels": 3, "num_classes": 10,
            "input_size": 32, "input_shape": [3, 32, 32]}  # fmt: skip
    model = create_model(spec["name"], 3, 10, 32).eval()
    save_model(tmp_path, model, spec)
    loaded = load_model(tmp_path)[0]
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
