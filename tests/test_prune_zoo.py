"""Issue 3, acceptance check 1: every zoo model pruned to half its MACs.

Parametrised over `models.list_models()`, so a newly registered model is covered with no new
test code. Each model is pruned at its natural input (CIFAR 3x32x32; DS-CNN 1x49x10 MFCCs) with
the channel rounding its registry entry asks for. The pruned model must run, keep its output
shape, export with torch.export, land within +-10 % of the MAC target (and not above it), and
come back from the plan (JSON) + safetensors with identical outputs, without any pickle.
"""

from __future__ import annotations

import json
import struct
import warnings

import pytest
import torch

import models
from pipeline.checkpoint import load_model, save_model
from pipeline.prune import count, prune_to_macs

NUM_CLASSES = 10
INPUTS = {"dscnn": (1, 49, 10)}  # DS-CNN's natural input: 49 frames x 10 MFCCs
CIFAR = (3, 32, 32)


def _spec(name: str) -> dict:
    c, h, w = INPUTS.get(name, CIFAR)
    return {
        "name": name,
        "in_channels": c,
        "num_classes": NUM_CLASSES,
        "input_size": h,
        "input_shape": [c, h, w],
    }


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Pruning and the small trainings here are faster on one thread on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", models.list_models())
def test_zoo_model_pruned_to_half_its_macs(name, tmp_path):
    spec = _spec(name)
    torch.manual_seed(0)
    model = models.create_model(name, spec["in_channels"], NUM_CLASSES, spec["input_size"]).eval()
    x = torch.randn(4, *spec["input_shape"])
    dense_weights = {k: v.clone() for k, v in model.state_dict().items()}

    res = prune_to_macs(model, x[:1], 0.5, "l2", models.get_model_entry(name).round_to)

    # the caller's model is untouched: pruning works on copies
    assert all(torch.equal(v, dense_weights[k]) for k, v in model.state_dict().items())
    # MACs within +-10 % of the target, never above it
    assert res.macs_after == count(res.model, x[:1])[0]
    assert 0.45 * res.macs_before <= res.macs_after <= 0.5 * res.macs_before, (
        f"{name}: {res.macs_after / res.macs_before:.3f} of the MACs"
    )
    assert res.plan["target_met"] and abs(res.fraction_reached / 0.5 - 1) <= 0.1
    # runs, same output shape, exports
    with torch.no_grad():
        out = res.model(x)
        assert out.shape == model(x).shape == (4, NUM_CLASSES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(res.model, (x[:1],))
    assert torch.allclose(exported.module()(x[:1]), res.model(x[:1]), atol=1e-5)
    # something was actually removed, in more than one layer
    before, after = res.plan["widths"]["before"], res.plan["widths"]["after"]
    assert sum(after[k] < before[k] for k in before) >= 2
    assert res.plan["verified"], "no group passed the exactness check"

    # save -> load through the plan (JSON) + safetensors, no pickle, identical outputs
    save_model(tmp_path, res.model, spec, res.plan)
    desc = json.loads((tmp_path / "model.json").read_text())
    assert desc["plan"]["history"] == res.plan["history"]
    raw = (tmp_path / "model.safetensors").read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    assert raw[8:9] == b"{" and json.loads(raw[8 : 8 + header_len])  # a safetensors header
    assert b"\x80\x02" not in raw[:2] and not raw.startswith(b"PK")  # not pickle, not torch zip
    again, _, _ = load_model(tmp_path)
    with torch.no_grad():
        assert torch.equal(again(x), out)
