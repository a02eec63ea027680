import json

import pytest
import torch

from models import create_model
from pipeline.checkpoint import load_model, save_model
from pipeline.config import IMPORTANCES
from pipeline.data import load_dataset
from pipeline.errors import UsageError
from pipeline.prune import count, prune_to_macs

SPEC = {"name": "small_cnn", "in_channels": 1, "num_classes": 10, "input_size": 8,
        "input_shape": [1, 8, 8]}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_prune_to_half_the_macs_with_every_criterion(importance, digits):
    torch.manual_seed(0)
    model = create_model("small_cnn", 1, 10, 8).eval()
    x = torch.from_numpy(digits.x_test[:4])
    res = prune_to_macs(model, x[:1], 0.5, importance, 8, (), (digits.x_train, digits.y_train))
    assert res.macs_after <= 0.5 * res.macs_before
    assert count(res.model, x[:1])[0] == res.macs_after
    assert res.model(x).shape == (4, 10)
    convs = [m for m in res.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    assert res.model.classifier.out_features == 10  # the head is never pruned


def test_plan_and_safetensors_round_trip_without_pickle(tmp_path, digits):
    model = create_model("small_cnn", 1, 10, 8).eval()
    x = torch.from_numpy(digits.x_test[:8])
    res = prune_to_macs(model, x[:1], 0.5)
    save_model(tmp_path, res.model, SPEC, res.plan)
    json.loads((tmp_path / "model.json").read_text())  # plain JSON, no pickle anywhere
    assert (tmp_path / "model.safetensors").read_bytes()[:8] != b"\x80\x02"  # not a pickle
    again, spec, plan = load_model(tmp_path)
    assert torch.equal(again(x), res.model(x))


def test_unknown_ignored_layer_is_a_usage_error():
    model = create_model("small_cnn", 1, 10, 8).eval()
    with pytest.raises(UsageError, match="prune.ignored_layers"):
        prune_to_macs(model, torch.zeros(1, 1, 8, 8), 0.5, ignored_layers=("nosuch",))
