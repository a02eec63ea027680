"""Every model in the zoo: shapes, torch.export, ExecuTorch-XNNPACK fp32 round trip, pruning.

Parametrised over `models.list_models()`, so a newly registered model is tested with no new test
code. Lowering to ExecuTorch costs seconds per model, so each model is lowered once (module-level
cache) and the export, numerics and delegation tests share it.
"""

from __future__ import annotations

import functools
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

import models
import targets
from models.vit import Attention
from targets._base import ExportRequest

NUM_CLASSES = 10
CIFAR = (3, 32, 32)  # (C, H, W) every model is tested at
DIGITS = (1, 8, 8)  # the bundled digits data
KWS = (1, 49, 10)  # DS-CNN's natural input: 49 frames x 10 MFCCs
NAMES = models.list_models()


def _build(name: str, shape=CIFAR) -> tuple[nn.Module, torch.Tensor]:
    c, h, w = shape
    torch.manual_seed(0)
    model = models.create_model(name, in_channels=c, num_classes=NUM_CLASSES, input_size=h).eval()
    return model, torch.randn(1, c, h, w)


def _widths(model: nn.Module) -> dict[str, int]:
    return {
        n: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def _classifier(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _lower(model: nn.Module, example: torch.Tensor) -> dict:
    """fp32 .pte through the project's backend; run it; compare with torch."""
    backend = targets.get_backend("executorch-xnnpack")
    out_dir = Path(tempfile.mkdtemp(prefix="test_models_"))
    exported = backend.export(ExportRequest(model.eval(), example, "fp32", None, out_dir))
    got = backend.load(exported.path)(example.numpy())
    with torch.no_grad():
        want = model(example).numpy()
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    return {"got": got, "want": want, "rel": rel, "preflight": exported.preflight}


@functools.cache
def _lowered(name: str) -> dict:
    return _lower(*_build(name))


@functools.cache
def _pruned(name: str) -> tuple[nn.Module, torch.Tensor, dict]:
    """MetaPruner at ratio 0.3, round_to=8, classifier kept; heads halved for attention."""
    model, x = _build(name)
    macs0, params0 = tp.utils.count_ops_and_params(model, x)
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    head_kw = {}
    if attns:
        head_kw = {
            "num_heads": {a.qkv: a.num_heads for a in attns},
            "prune_num_heads": True,
            "prune_head_dims": False,
            "head_pruning_ratio": 0.5,
        }
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.3,
        ignored_layers=[_classifier(model)],
        round_to=8,
        **head_kw,
    )
    pruner.step()
    for a in attns:  # the attributes the forward reshapes with
        a.num_heads = pruner.num_heads[a.qkv]
        a.head_dim = a.qkv.out_features // (3 * a.num_heads)
    macs1, params1 = tp.utils.count_ops_and_params(model, x)
    return model.eval(), x, {"macs": (macs0, macs1), "params": (params0, params1)}


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_description(name):
    entry = models.get_model_entry(name)
    assert entry.description and entry.round_to == 8


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [CIFAR, DIGITS], ids=["cifar", "digits"])
def test_forward_shape(name, shape):
    model, x = _build(name, shape)
    x = x.expand(2, -1, -1, -1).contiguous()  # batch 2: nothing may assume B == 1
    with torch.no_grad():
        assert model(x).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", NAMES)
def test_widths_are_multiples_of_8(name):
    """round_to=8 leaves groups whose width is not a multiple of 8 unpruned."""
    model, _ = _build(name)
    head = _classifier(model)
    odd = {
        n: w
        for n, w in _widths(model).items()
        if w % 8 and dict(model.named_modules())[n] is not head
    }
    assert not odd


@pytest.mark.parametrize("name", NAMES)
def test_torch_export(name):
    model, x = _build(name)
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x))


def test_dscnn_natural_shape():
    """DS-CNN at its keyword-spotting input (1, 49, 10); the same ops lower at 3x32x32 below."""
    model, x = _build("dscnn", KWS)
    with torch.no_grad():
        assert model(x).shape == (1, NUM_CLASSES)
        torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_executorch_fp32_matches_torch(name):
    r = _lowered(name)
    assert r["got"].shape == (1, NUM_CLASSES)
    assert r["rel"] <= 1e-4, f"max |diff| / max |ref| = {r['rel']:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_xnnpack_delegation(name, record_property):
    """Conv nets lower to XNNPACK whole; transformers may keep LayerNorm outside (noted)."""
    pre = _lowered(name)["preflight"]
    record_property("delegated_fraction", pre["delegated_fraction"])
    record_property("non_delegated_ops", pre["non_delegated_ops"])
    model, _ = _build(name)
    if any(isinstance(m, nn.LayerNorm) for m in model.modules()):
        if pre["non_delegated_ops"]:
            warnings.warn(
                f"{name}: {pre['delegated_fraction']:.1%} of ops delegated to XNNPACK; "
                f"outside: {pre['non_delegated_ops']}",
                stacklevel=1,
            )
        return
    assert pre["delegated_fraction"] == 1.0, pre


@pytest.mark.filterwarnings("ignore:Unwrapped parameters")  # ViT cls_token/pos_embed: last dim
@pytest.mark.parametrize("name", NAMES)
def test_prune_runs_and_exports(name):
    model, x, counts = _pruned(name)
    (macs0, macs1), (params0, params1) = counts["macs"], counts["params"]
    print(
        f"{name}: MACs {macs0 / 1e6:.1f}M -> {macs1 / 1e6:.1f}M, "
        f"params {params0 / 1e6:.3f}M -> {params1 / 1e6:.3f}M"
    )
    assert macs1 < 0.8 * macs0 and params1 < params0
    head = _classifier(model)
    assert head.out_features == NUM_CLASSES
    odd = {
        n: w
        for n, w in _widths(model).items()
        if w % 8 and dict(model.named_modules())[n] is not head
    }
    assert not odd, "round_to=8 left widths that are not multiples of 8"
    for a in (m for m in model.modules() if isinstance(m, Attention)):
        assert (a.num_heads, a.head_dim) == (2, 16)  # half the heads, head size kept
    with torch.no_grad():
        assert model(x).shape == (1, NUM_CLASSES)
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x))


@pytest.mark.slow
def test_pruned_vit_through_executorch():
    """Head-pruned attention (num_heads/head_dim fixed up) lowers and computes the same."""
    model, x, _ = _pruned("vit_tiny")
    r = _lower(model, x)
    assert r["rel"] <= 1e-4, f"max |diff| / max |ref| = {r['rel']:.2e}"
