"""Core ML backend: export fp32, fp16 and int8 (weight-only) .mlpackage directories and check
them the ways that work off macOS: structure (spec, I/O, MIL ops, size) and weights."""

from __future__ import annotations

import sys

import pytest
import torch

from models import create_model
from pipeline.data import load_dataset
from pipeline.train import fit
from pipeline.verify import compare
from targets import get_backend
from targets._base import ExportRequest
from targets.coreml import structural_check

pytestmark = pytest.mark.slow

IO = {
    "inputs": [{"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32"}],
    "outputs": [{"name": "logits", "shape": [1, 10], "dtype": "float32"}],
}
N_WEIGHTS = 5  # small_cnn: 4 convs + 1 linear


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
    fit(model, ds.x_train, ds.y_train, epochs=2, batch_size=64, lr=3e-3, desc="test-coreml")
    return model.eval(), ds


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    model, ds = trained
    backend = get_backend("coreml")
    example = torch.from_numpy(ds.x_test[:1])
    return {
        p: backend.export(
            ExportRequest(model, example, p, None, tmp_path_factory.mktemp(f"coreml-{p}"))
        )
        for p in backend.precisions
    }


def test_registered():
    backend = get_backend("coreml")
    assert backend.filename == "model.mlpackage"
    assert backend.precisions == ("fp32", "fp16", "int8", "palettize6", "palettize4")
    ok, why = backend.can_run()
    assert ok == (sys.platform == "darwin")
    if not ok:
        assert "macOS" in why


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_structure(exported, precision):
    exp = exported[precision]
    assert exp.path.name == "model.mlpackage" and exp.path.is_dir()
    assert sorted(p.name for p in exp.path.parent.iterdir()) == ["model.mlpackage"]  # no temp dirs
    d = get_backend("coreml").describe(exp.path)
    assert d["model_type"] == "mlProgram"
    assert d["specification_version"] == 8  # iOS17
    assert d["inputs"] == IO["inputs"] and d["outputs"] == IO["outputs"]
    assert d["file_ops"]["conv"] == 4 and d["file_ops"]["linear"] == 1
    assert d["structural_problems"] == []
    assert d["bytes"] == sum(p.stat().st_size for p in exp.path.rglob("*") if p.is_file())
    assert exp.io == IO
    assert exp.preflight["file_ops"] == d["file_ops"]
    check = structural_check(exp.path, IO)
    assert check["ok"], check["problems"]
    dequant = d["file_ops"].get("constexpr_affine_dequantize", 0)
    assert dequant == (N_WEIGHTS if precision == "int8" else 0)
    assert ("cast" in d["file_ops"]) == (precision == "fp16")  # fp16 program, float32 I/O


def test_structural_check_reports_mismatches(exported):
    wrong = {
        "inputs": [{"name": "input", "shape": [1, 1, 8, 8]}],
        "outputs": [{"name": "logits", "shape": [1, 12]}],
    }
    check = structural_check(exported["fp32"].path, wrong)
    assert not check["ok"]
    assert any("names" in p for p in check["problems"])
    assert any("shape" in p for p in check["problems"])


def test_sizes(exported):
    size = {p: get_backend("coreml").describe(e.path)["bytes"] for p, e in exported.items()}
    assert size["fp16"] < 0.6 * size["fp32"]
    assert size["int8"] < 0.35 * size["fp32"]
    # 6-bit and 4-bit indices plus one 64/16-entry table per tensor
    assert size["palettize6"] < 0.28 * size["fp32"]
    assert size["palettize4"] < size["palettize6"] < size["int8"]


@pytest.mark.parametrize("precision, entries", [("palettize6", 64), ("palettize4", 16)])
def test_palettized_weights_are_nearest_palette_entries(exported, precision, entries):
    """k-means palettization: at most 2^n distinct values per tensor, each weight its
    nearest entry; the twin reference holds exactly those weights."""
    wc = exported[precision].preflight["weights_check"]
    assert wc["ok"], wc["problems"]
    assert wc["checked"] == N_WEIGHTS
    for op in wc["per_op"].values():
        assert 1 < op["palette_size"] <= entries and op["not_nearest"] == 0
    assert wc["max_weight_rel_diff"] > 1e-3  # really compressed


def test_palette_check_catches_a_wrong_assignment(exported, trained):
    """The check can fail: against a different model's weights nothing is nearest."""
    from targets.coreml import _folded_torch_weights, weights_check

    _model, ds = trained
    other = create_model("small_cnn", 1, 10, 8).eval()  # untrained, other weights
    ep = torch.export.export(other, (torch.from_numpy(ds.x_test[:1]),)).run_decompositions({})
    wc = weights_check(exported["palettize4"].path, _folded_torch_weights(ep), "palettize4")
    assert not wc["ok"] and any("nearest palette entry" in p for p in wc["problems"])


@pytest.mark.parametrize("precision,bound", [("fp32", 1e-5), ("fp16", 1e-3), ("int8", 4.1e-3)])
def test_weights_match_torch(exported, precision, bound):
    wc = exported[precision].preflight["weights_check"]
    assert wc["ok"], wc["problems"]
    assert wc["checked"] == N_WEIGHTS
    assert wc["max_weight_rel_diff"] <= bound
    if precision == "int8":
        assert wc["max_weight_rel_diff"] > 1e-4  # really quantized, not the fp32 weights


def test_int8_reference_is_weight_quantized_twin(trained, exported):
    model, ds = trained
    ref = exported["int8"].reference
    assert ref is not model
    x = torch.from_numpy(ds.x_test)
    with torch.no_grad():
        fig = compare(model(x).numpy(), ref(x).numpy())
    assert 30 < fig["sqnr_db"] < 200
    assert fig["top1_agreement"] >= 0.98
    assert exported["fp32"].reference is model


def test_load_needs_macos(exported):
    backend = get_backend("coreml")
    if sys.platform == "darwin":
        out = backend.load(exported["fp32"].path)(torch.zeros(1, 1, 8, 8).numpy())
        assert out.shape == (1, 10)
    else:
        with pytest.raises(RuntimeError, match="macOS"):
            backend.load(exported["fp32"].path)


def test_options_and_reexport(trained, tmp_path):
    model, ds = trained
    backend = get_backend("coreml")
    example = torch.from_numpy(ds.x_test[:1])
    with pytest.raises(ValueError, match="unknown option"):
        backend.export(ExportRequest(model, example, "fp32", None, tmp_path, {"bogus": 1}))
    with pytest.raises(ValueError, match="minimum_deployment_target"):
        backend.export(
            ExportRequest(
                model, example, "fp32", None, tmp_path, {"minimum_deployment_target": "iOS99"}
            )
        )
    with pytest.raises(ValueError, match="precision"):
        backend.export(ExportRequest(model, example, "int4", None, tmp_path))
    opts = {"minimum_deployment_target": "iOS18"}
    for _ in range(2):  # the second export replaces the first package atomically
        exp = backend.export(ExportRequest(model, example, "fp32", None, tmp_path, opts))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mlpackage"]
    assert backend.describe(exp.path)["specification_version"] == 9  # iOS18
