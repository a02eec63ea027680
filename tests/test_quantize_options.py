"""Quantization options (issue 6) on a trained model and real data: ExecuTorch int8 by PTQ
and by quantization-aware training (PT2E QAT), each .pte smaller than fp32 and equal to its
own quantized PyTorch reference when reloaded; and feature distillation's hints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ground.errors import UsageError
from models import create_model
from pipeline.data import load_dataset
from pipeline.distill import FeatureHints, feature_pairs, kd_loss_fn
from pipeline.train import accuracy, fit, predict
from pipeline.verify import parity
from targets import get_backend
from targets._base import ExportRequest, run_all


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def trained(one_thread):
    d = load_dataset("digits")
    torch.manual_seed(0)
    model = create_model("small_cnn", 1, 10, 8)
    fit(model, d.x_train, d.y_train, epochs=6, batch_size=64, lr=3e-3)
    return model.eval(), d


@pytest.fixture(scope="module")
def pte(trained, tmp_path_factory):
    model, d = trained
    b, calib = get_backend("executorch-xnnpack"), d.x_train[:128]
    epochs_seen = []

    def qat(prepared):
        epochs_seen.append(1)
        fit(
            prepared,
            d.x_train,
            d.y_train,
            epochs=1,
            batch_size=64,
            lr=2e-4,
            desc="QAT",
            loss_fn=kd_loss_fn(model, 4.0, 0.7),
        )

    out = {}
    for name, precision, train in (
        ("fp32", "fp32", None),
        ("ptq", "int8", None),
        ("qat", "int8", qat),
    ):
        folder = tmp_path_factory.mktemp(name)
        out[name] = b.export(
            ExportRequest(
                model,
                torch.from_numpy(d.x_test[:1]),
                precision,
                calib if precision == "int8" else None,
                folder,
                train=train,
            )
        )
    assert epochs_seen == [1]  # the QAT hook ran once, between prepare and convert
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ptq", "qat"])
def test_int8_pte_is_smaller_and_matches_its_quantized_reference(trained, pte, name):
    model, d = trained
    e = pte[name]
    assert e.path.stat().st_size < 0.5 * pte["fp32"].path.stat().st_size
    runner = get_backend("executorch-xnnpack").load(e.path, threads=1)
    x = d.x_test
    with torch.no_grad():
        ref = torch.cat([e.reference(torch.from_numpy(x[i : i + 1])) for i in range(len(x))])
    out = run_all(runner, x)
    rng = np.random.default_rng(0)
    xr = rng.standard_normal((16, *x.shape[1:])).astype(np.float32)
    with torch.no_grad():
        ref_r = torch.cat([e.reference(torch.from_numpy(xr[i : i + 1])) for i in range(16)])
    block = parity(ref.numpy(), out, ref_r.numpy(), run_all(runner, xr), d.y_test, e.tolerance)
    assert block["state"] == "verified", block["problems"]
    fp32 = accuracy(predict(model, x), d.y_test)
    assert block["file_accuracy"] >= fp32 - 0.02


@pytest.mark.slow
def test_qat_trains_the_quantized_model(trained, pte):
    """QAT's reference differs from PTQ's (it was trained with fake-quant in the loop)."""
    _, d = trained
    x = torch.from_numpy(d.x_test[:32])
    with torch.no_grad():
        a = torch.cat([pte["ptq"].reference(x[i : i + 1]) for i in range(32)])
        b = torch.cat([pte["qat"].reference(x[i : i + 1]) for i in range(32)])
    assert not torch.allclose(a, b)


def test_feature_hints_are_the_mse_through_the_adapter(trained):
    """A pruned-width student: hint loss = MSE(adapter(student feature), teacher feature)."""
    model, d = trained
    from pipeline.prune import prune

    student = prune(model, torch.zeros(1, 1, 8, 8), 0.5, round_to=8).model
    pairs = feature_pairs(student, model, ())
    assert pairs == [("features.4.0", "features.4.0")]  # the last conv, by name in both
    hints = FeatureHints(student, model, pairs, torch.zeros(1, 1, 8, 8))
    x = torch.from_numpy(d.x_test[:4])
    student(x)  # the forward hooks keep the paired layers' outputs
    with torch.no_grad():
        model(x)
        s_feat = student.features[4][0](student.features[:4](x))  # the conv's own output
        t_feat = model.features[4][0](model.features[:4](x))
    want = torch.nn.functional.mse_loss(hints.adapters[0](s_feat), t_feat)
    assert hints.adapters[0].in_channels < hints.adapters[0].out_channels  # widths differ
    assert hints.loss().item() == pytest.approx(want.item(), rel=1e-5)
    hints.close()


def test_feature_layer_names_are_checked(trained):
    model, _ = trained
    with pytest.raises(UsageError, match="distill.feature_layers: no module 'nosuch'"):
        feature_pairs(model, model, ("nosuch",))
