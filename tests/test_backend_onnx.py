"""ONNX Runtime backend: export fp32 and int8 (static QDQ), reload, run the whole digits test
split and check parity with each file's PyTorch reference, the way the pipeline does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import create_model
from pipeline.data import load_dataset
from pipeline.train import accuracy, fit, predict
from pipeline.verify import compare, parity
from targets import get_backend
from targets._base import ExportRequest, run_all

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny model, tiny batches: one thread is faster, and far faster on a busy 2-core host."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(one_torch_thread):
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = create_model("small_cnn", 1, 10, 8)
    fit(model, ds.x_train, ds.y_train, epochs=2, batch_size=64, lr=3e-3, desc="test-onnx")
    return model.eval(), ds


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    model, ds = trained
    backend = get_backend("onnx")
    example = torch.from_numpy(ds.x_test[:1])
    out = {}
    for precision in ("fp32", "int8"):
        folder = tmp_path_factory.mktemp(f"onnx-{precision}")
        out[precision] = backend.export(
            ExportRequest(
                model, example, precision, ds.x_train[:128] if precision == "int8" else None, folder
            )
        )
    return out


def _verify(backend, exp, ds):
    """The pipeline's parity block for one file: test split plus random inputs."""
    x_rand = np.random.default_rng(1234).standard_normal((32, *ds.input_shape)).astype(np.float32)
    with torch.no_grad():
        ref_test = exp.reference(torch.from_numpy(ds.x_test)).numpy()
        ref_rand = exp.reference(torch.from_numpy(x_rand)).numpy()
    runner = backend.load(exp.path, threads=1)
    return parity(
        ref_test,
        run_all(runner, ds.x_test),
        ref_rand,
        run_all(runner, x_rand),
        ds.y_test,
        exp.tolerance,
    )


def test_registered_and_runs_here():
    backend = get_backend("onnx")
    assert backend.filename == "model.onnx"
    assert backend.precisions == ("fp32", "int8")
    assert backend.can_run()[0]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_single_file_and_valid_onnx(exported, precision):
    import onnx

    exp = exported[precision]
    assert exp.path.name == "model.onnx"
    # no .onnx.data, no preprocessed/augmented models left beside it
    assert sorted(p.name for p in exp.path.parent.iterdir()) == ["model.onnx"]
    onnx.checker.check_model(onnx.load(str(exp.path)), full_check=True)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_describe(exported, precision):
    exp = exported[precision]
    d = get_backend("onnx").describe(exp.path)
    assert d["opset"] == 18
    assert d["ir_version"] >= 8
    assert d["external_data"] is False
    assert d["bytes"] == exp.path.stat().st_size
    assert d["inputs"] == [{"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    assert d["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    assert d["file_ops"]["Conv"] == 4 and d["file_ops"]["Gemm"] == 1
    assert "BatchNormalization" not in d["file_ops"]  # folded into the convolutions
    assert exp.preflight["file_ops"] == d["file_ops"]
    assert exp.io == {"inputs": d["inputs"], "outputs": d["outputs"]}
    if precision == "int8":
        assert d["file_ops"]["QuantizeLinear"] > 0 and d["file_ops"]["DequantizeLinear"] > 0
        assert d["quantized_initializers"]["int8"] >= 5  # 4 conv + 1 gemm weights
    else:
        assert "QuantizeLinear" not in d["file_ops"] and not d["quantized_initializers"]


def test_fp32_parity(trained, exported):
    model, ds = trained
    exp = exported["fp32"]
    assert exp.reference is model
    block = _verify(get_backend("onnx"), exp, ds)
    assert block["state"] == "verified", block["problems"]
    assert block["test_split"]["max_abs_diff_rel"] < 1e-5
    assert block["file_accuracy"] == block["reference_accuracy"]
    assert block["file_accuracy"] > 0.9


def test_int8_parity_size_and_accuracy(trained, exported):
    from targets.onnx_runtime import QdqTorchReference

    model, ds = trained
    exp = exported["int8"]
    assert isinstance(exp.reference, QdqTorchReference)  # the QDQ graph in torch, not fp32
    assert exp.path.stat().st_size < 0.5 * exported["fp32"].path.stat().st_size
    block = _verify(get_backend("onnx"), exp, ds)
    assert block["state"] == "verified", block["problems"]
    assert block["test_split"]["sqnr_db"] > exp.tolerance.min_sqnr_db
    fp32_acc = accuracy(predict(model, ds.x_test), ds.y_test)
    assert abs(block["file_accuracy"] - fp32_acc) <= 0.02
    # the quantization error proper (QDQ graph vs fp32) was measured at export
    qerr = exp.preflight["quantization_error"]
    assert qerr["sqnr_db"] > 20 and qerr["top1_agreement"] >= 0.95
    assert exp.notes and "reference" in exp.notes[0]


def test_torch_evaluator_reproduces_fp32_file(trained, exported):
    """The QDQ reference evaluator, run on the fp32 graph, equals the torch model."""
    import onnx

    from targets.onnx_runtime import QdqTorchReference

    model, ds = trained
    x = torch.from_numpy(ds.x_test[:32])
    with torch.no_grad():
        fig = compare(
            model(x).numpy(), QdqTorchReference(onnx.load(str(exported["fp32"].path)))(x).numpy()
        )
    assert fig["max_abs_diff_rel"] < 1e-5


def test_bad_requests(trained, tmp_path):
    model, ds = trained
    backend = get_backend("onnx")
    example = torch.from_numpy(ds.x_test[:1])
    with pytest.raises(ValueError, match="precision"):
        backend.export(ExportRequest(model, example, "fp16", None, tmp_path))
    with pytest.raises(ValueError, match="calibration"):
        backend.export(ExportRequest(model, example, "int8", None, tmp_path))
    assert not (tmp_path / "model.onnx").exists()
