"""Pruning what users bring (issue 26): architectures the zoo does not have, each pruned to a
MAC target or refused in one line, with every group that kept its width, was cut to its floor
or could not be checked exactly named in the plan with the reason."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

import cli
from ground.errors import UsageError
from pipeline.confidence import fold_temperature
from pipeline.prune import prune_to_macs
from tests.unseen_models import ALL, convnext, resnext, shufflenet, squeezenet

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _floor(width: int, step: int = 8, min_width: float = 0.25) -> int:
    return min(width, max(step, math.ceil(min_width * width / step) * step))


@pytest.mark.parametrize("name", sorted(set(ALL) - {"shufflenet"}))
def test_unseen_architecture_prunes_to_half_the_macs_without_a_width_below_its_floor(name):
    res = prune_to_macs(ALL[name]().eval(), X, 0.5)
    assert res.fraction_reached <= 0.5 and res.model(X).shape == (1, 10)
    before, after = res.plan["widths"]["before"], res.plan["widths"]["after"]
    assert all(after[n] >= _floor(w) for n, w in before.items()), (before, after)
    # every group is accounted for: verified exactly, or listed with why it is not
    assert res.plan["verified"]
    assert set(res.plan["unverified"]) == set(res.plan["unverified_why"])


def test_channel_shuffle_groups_keep_their_width_and_an_unreachable_target_is_one_line():
    with pytest.raises(UsageError) as err:
        prune_to_macs(shufflenet().eval(), X, 0.5)
    msg = str(err.value)
    assert "\n" not in msg and "must keep their width" in msg and "at their floor" in msg


def test_shuffle_groups_are_listed_with_the_reason_when_the_target_allows():
    res = prune_to_macs(shufflenet().eval(), X, 0.9)
    assert {"0.0", "3.0"} <= set(res.plan["frozen"]) and res.fraction_reached <= 0.9
    assert all(res.plan["frozen"].values())


@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_grouped_convs_lose_the_same_channels_in_every_group_and_are_verified(fraction):
    res = prune_to_macs(resnext().eval(), X, fraction)
    assert not res.plan["frozen"] and res.fraction_reached <= fraction
    for block in (1, 2, 3):
        conv = res.model[block].body[1][0]
        assert conv.groups == 4 and conv.in_channels % 4 == conv.out_channels % 4 == 0
        assert conv.in_channels < 64 and f"{block}.body.1.0" in res.plan["verified"]


@pytest.mark.parametrize("fraction", [0.75, 0.5, 0.25])
def test_a_1x1_conv_classifier_keeps_its_class_count(fraction):
    res = prune_to_macs(squeezenet().eval(), X, fraction)
    assert res.model[4].out_channels == 10 and res.model(X).shape == (1, 10)


def test_temperature_folds_into_a_pruned_1x1_conv_classifier():
    model = prune_to_macs(squeezenet().eval(), X, 0.5).model
    folded = fold_temperature(model, 1.7, X)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x) / 1.7, rtol=1e-5, atol=1e-6)


def test_groups_through_layernorm_over_channels_are_listed_with_the_reason():
    res = prune_to_macs(convnext().eval(), X, 0.5)
    why = res.plan["unverified_why"]
    assert why and all("LayerNorm" in v for v in why.values())


@pytest.mark.slow
def test_a_dense_concatenation_network_exports_to_pte_tflite_and_onnx_and_passes_parity(
    cifar_photos, tmp_path
):
    """Concatenations need one quantization scale over their inputs in every int8 backend."""
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.cli, [
        "compress", "--target", "linux-arm64", "--model", "tests/unseen_models.py:densenet",
        "--data", str(cifar_photos), "--input-size", "32", "--epochs", "3",
        "--distill-epochs", "1", "--out", str(out), "--run-dir", str(tmp_path / "run"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:] + repr(result.exception)
    report = json.loads((out / "linux-arm64" / "report.json").read_text())
    files = {b["file"]: b["parity"]["state"] for b in report["backends"].values()}
    assert files == {"model.pte": "verified", "model.tflite": "verified", "model.onnx": "verified"}
