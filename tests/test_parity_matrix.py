"""Backends x zoo models x real data: every exported file, reloaded through its own runtime,
matches its PyTorch reference at the backend's stated tolerance.

Needs ../shared/data/cifar10 (real CIFAR-10, see its README) beside the repository, as in CI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models import create_model
from pipeline.data import load_dataset
from pipeline.train import accuracy, fit, predict
from pipeline.verify import parity
from targets import get_backend
from targets._base import ExportRequest, run_all

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
CASES = {  # (model, data, train images, epochs)
    "small_cnn-digits": ("small_cnn", "digits", None, 6),
    "resnet20-cifar10": ("resnet20", str(CIFAR), 3000, 4),
}
BACKENDS = [
    ("executorch-xnnpack", "fp32"),
    ("executorch-xnnpack", "int8"),
    ("tflite", "fp32"),
    ("tflite", "int8"),
    ("onnx", "fp32"),
    ("onnx", "int8"),
]
TEST_IMAGES = 200


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # 2 cores: the batch-1 reference and runtimes interleave badly with torch's thread pool
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def trained():
    cache = {}

    def get(case):
        if case not in cache:
            name, data, limit, epochs = CASES[case]
            assert data == "digits" or CIFAR.is_dir(), f"missing real CIFAR-10 at {CIFAR}"
            d = load_dataset(data, limit_train=limit)
            torch.manual_seed(0)
            c, h, _ = d.input_shape
            model = create_model(name, c, d.num_classes, h)
            fit(model, d.x_train, d.y_train, epochs=epochs, batch_size=64, lr=0.003)
            cache[case] = (model.eval(), d)
        return cache[case]

    return get


@pytest.mark.parametrize("backend, precision", BACKENDS, ids=[f"{b}-{p}" for b, p in BACKENDS])
@pytest.mark.parametrize("case", list(CASES))
def test_reloaded_file_matches_its_reference(trained, case, backend, precision, tmp_path):
    model, d = trained(case)
    b = get_backend(backend)
    x, y = d.x_test[:TEST_IMAGES], d.y_test[:TEST_IMAGES]
    exp = b.export(
        ExportRequest(
            model,
            torch.from_numpy(x[:1]),
            precision,
            d.x_train[:128] if precision == "int8" else None,
            tmp_path,
        )
    )
    rng = np.random.default_rng(0)
    x_rand = rng.standard_normal((16, *x.shape[1:])).astype(np.float32)
    with torch.no_grad():
        ref = [
            np.concatenate(
                [exp.reference(torch.from_numpy(a[i : i + 1])).numpy() for i in range(len(a))]
            )
            for a in (x, x_rand)
        ]
    runner = b.load(exp.path, threads=1)
    block = parity(ref[0], run_all(runner, x), ref[1], run_all(runner, x_rand), y, exp.tolerance)
    assert block["state"] == "verified", block["problems"]
    fp32_acc = accuracy(predict(model, x), y)
    # int8 may cost accuracy; more than 3 points on 200 images would be a broken quantizer
    assert block["file_accuracy"] >= fp32_acc - 0.03, (block["file_accuracy"], fp32_acc)
