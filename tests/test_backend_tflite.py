"""The LiteRT/TFLite backend: fp32 and fully int8 files, run on the test split of digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
import targets
from pipeline.data import load_dataset
from pipeline.train import accuracy, fit, predict
from targets._base import ExportRequest, run_all

CALIBRATION = 64  # training images; the histogram observers cost ~10-30 ms per image


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny 8x8 images: one intra-op thread is faster, and far faster on a busy 2-core host
    where OpenMP threads wait on each other (3 epochs: ~4 s instead of ~25 s)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def trained():
    ds = load_dataset("digits")
    model = models.create_model("small_cnn", 1, 10, 8)
    fit(model, ds.x_train, ds.y_train, epochs=3, batch_size=64, lr=3e-3, seed=0)
    model.eval()
    return ds, model, predict(model, ds.x_test)


@pytest.fixture(scope="module")
def backend():
    return targets.get_backend("tflite")


@pytest.fixture(scope="module")
def exported(trained, backend, tmp_path_factory):
    ds, model, _ = trained
    example = torch.from_numpy(ds.x_test[:1])
    out = {}
    for precision in ("fp32", "int8"):
        d = tmp_path_factory.mktemp(precision)
        out[precision] = backend.export(
            ExportRequest(model, example, precision, ds.x_train[:CALIBRATION], d)
        )
    return out


@pytest.fixture(scope="module")
def int8_reference(trained, exported):
    """The quantized torch graph over the test split, 64 rows at a time as compress does."""
    x = trained[0].x_test
    ref = exported["int8"].reference
    with torch.no_grad():
        return torch.cat(
            [ref(torch.from_numpy(x[i : i + 64])) for i in range(0, len(x), 64)]
        ).numpy()


def _sqnr_db(ref, out):
    return float(
        10
        * np.log10(
            np.sum(ref.astype(np.float64) ** 2) / np.sum((ref.astype(np.float64) - out) ** 2)
        )
    )


def test_registered(backend):
    assert backend.name == "tflite" and "tflite" in targets.list_backends()
    assert backend.filename == "model.tflite"
    assert backend.precisions == ("fp32", "int8")
    ok, reason = backend.can_run()
    assert ok, reason


def test_trained_model_is_good(trained):
    ds, _, logits = trained
    assert accuracy(logits, ds.y_test) >= 0.95


def test_fp32_matches_torch(trained, backend, exported):
    ds, _, torch_logits = trained
    e = exported["fp32"]
    assert e.path.name == "model.tflite" and e.path.is_file()
    out = run_all(backend.load(e.path, threads=1), ds.x_test)
    assert out.shape == torch_logits.shape and out.dtype == np.float32
    rel = np.abs(out - torch_logits).max() / np.abs(torch_logits).max()
    assert rel <= e.tolerance.max_abs_rel, rel
    assert abs(accuracy(out, ds.y_test) - accuracy(torch_logits, ds.y_test)) <= 0.02
    (inp,), (outp,) = e.io["inputs"], e.io["outputs"]
    assert inp == {
        "name": "args_0",
        "tensor": inp["tensor"],
        "shape": [1, 1, 8, 8],
        "dtype": "float32",
        "layout": "NCHW",
    }
    assert outp["name"] == "output_0" and outp["shape"] == [1, 10]
    assert outp["dtype"] == "float32" and "quantization" not in outp


def test_int8_matches_quantized_reference(trained, backend, exported, int8_reference):
    ds, _, torch_logits = trained
    e = exported["int8"]
    out = run_all(backend.load(e.path), ds.x_test)
    ref = int8_reference
    assert out.shape == ref.shape and out.dtype == np.float32
    assert _sqnr_db(ref, out) >= e.tolerance.min_sqnr_db == 25.0
    agreement = float((out.argmax(1) == ref.argmax(1)).mean())
    assert agreement >= e.tolerance.min_agreement == 0.98
    assert abs(accuracy(out, ds.y_test) - accuracy(torch_logits, ds.y_test)) <= 0.02
    assert e.path.stat().st_size < exported["fp32"].path.stat().st_size


def test_int8_io_is_int8_with_quantization(exported):
    io = exported["int8"].io
    assert io["layout"] == "NCHW"
    for t in io["inputs"] + io["outputs"]:
        assert t["dtype"] == "int8"
        q = t["quantization"]
        assert isinstance(q["scale"], float) and q["scale"] > 0
        assert isinstance(q["zero_point"], int) and -128 <= q["zero_point"] <= 127
    assert io["inputs"][0]["shape"] == [1, 1, 8, 8]


def test_int8_file_runs_from_io_alone(trained, backend, exported):
    """What an app engineer does with model.json: plain LiteRT, quantize and dequantize by hand."""
    from ai_edge_litert.interpreter import Interpreter

    ds, _, _ = trained
    e = exported["int8"]
    io = e.io
    (inp,), (outp,) = io["inputs"], io["outputs"]
    interp = Interpreter(model_path=str(e.path))
    run = interp.get_signature_runner(io["signature"])
    si, zi = inp["quantization"]["scale"], inp["quantization"]["zero_point"]
    so, zo = outp["quantization"]["scale"], outp["quantization"]["zero_point"]
    by_hand = []
    for i in range(len(ds.x_test)):
        q = np.clip(np.round(ds.x_test[i : i + 1] / si) + zi, -128, 127).astype(np.int8)
        y = run(**{inp["name"]: q})[outp["name"]]
        assert y.dtype == np.int8 and list(y.shape) == outp["shape"]
        by_hand.append((y.astype(np.float32) - zo) * so)
    by_hand = np.concatenate(by_hand)
    out = run_all(backend.load(e.path), ds.x_test)
    np.testing.assert_allclose(by_hand, out, rtol=0, atol=1e-6)


def test_describe_counts_ops_and_delegation(exported, backend):
    for precision, e in exported.items():
        info = backend.describe(e.path)
        assert info["bytes"] == e.path.stat().st_size
        assert info["file_ops"] == e.preflight["file_ops"]
        assert info["file_ops"]["CONV_2D"] + info["file_ops"].get("DEPTHWISE_CONV_2D", 0) == 4
        assert info["file_ops"]["FULLY_CONNECTED"] == 1
        assert info["inputs"][0]["name"] == "args_0"
        assert info["delegation"]["delegated_fraction"] == 1.0, info["delegation"]
        assert e.preflight["delegated_fraction"] == 1.0
        if precision == "int8":  # fully int8: no float tensor left in the file
            assert "FLOAT32" not in info["tensor_dtypes"], info["tensor_dtypes"]
            assert info["tensor_dtypes"]["INT8"] > 0


def test_rejects_bad_requests(trained, backend, tmp_path):
    ds, model, _ = trained
    example = torch.from_numpy(ds.x_test[:1])
    with pytest.raises(ValueError, match="precision"):
        backend.export(ExportRequest(model, example, "fp16", None, tmp_path))
    with pytest.raises(ValueError, match="calibration"):
        backend.export(ExportRequest(model, example, "int8", None, tmp_path))


class _BatchOne(torch.nn.Module):
    """A forward that only works for batch 1, so the batch cannot be exported as dynamic."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).reshape(1, -1))


def test_int8_reference_of_batch_one_model_runs_row_by_row(trained, backend, tmp_path):
    ds = trained[0]
    model = _BatchOne().eval()
    e = backend.export(
        ExportRequest(model, torch.from_numpy(ds.x_test[:1]), "int8", ds.x_train[:8], tmp_path)
    )
    assert any("row by row" in n for n in e.notes)
    with torch.no_grad():
        ref = e.reference(torch.from_numpy(ds.x_test[:5])).numpy()
    out = run_all(backend.load(e.path), ds.x_test[:5])
    assert ref.shape == out.shape == (5, 10)
    assert _sqnr_db(ref, out) >= 25.0
