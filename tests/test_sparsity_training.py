"""Sparsity-training options (issue 6): group lasso over torch-pruning's channel groups,
L1 on batch-norm scales, targeted dropout and its untargeted control, checked against
hand-computed values and for the effect each is meant to have."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.config import TrainConfig
from pipeline.data import load_dataset
from pipeline.regularize import (
    SparsityTraining,
    add_channel_dropout,
    bn_l1,
    group_lasso,
    remove_channel_dropout,
)
from pipeline.train import cross_entropy, fit


class Tiny(nn.Module):
    """conv(1->4) -> bn -> relu -> conv(4->3) -> pool -> linear(3->2): two channel groups."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 3, 3, padding=1, bias=False)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = self.c2(torch.relu(self.bn(self.c1(x))))
        return self.fc(x.mean((2, 3)))


def test_group_lasso_equals_the_hand_computed_sum_of_group_norms():
    torch.manual_seed(0)
    m = Tiny()
    with torch.no_grad():
        m.bn.weight.uniform_(0.5, 1.5)
    x = torch.zeros(1, 1, 6, 6)
    # group of c1's channel c: c1.weight[c], bn.weight[c], c2.weight[:, c];
    # group of c2's channel k: c2.weight[k], fc.weight[:, k] (the classifier's outputs are not
    # pruned, but its input columns belong to c2's channels)
    w1, g, w2, fc = m.c1.weight, m.bn.weight, m.c2.weight, m.fc.weight
    by_hand = sum(torch.sqrt(w1[c].pow(2).sum() + g[c] ** 2 + w2[:, c].pow(2).sum())
                  for c in range(4))
    by_hand = by_hand + sum(torch.sqrt(w2[k].pow(2).sum() + fc[:, k].pow(2).sum())
                            for k in range(3))
    assert group_lasso(m, x)().item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_bn_l1_is_the_sum_of_absolute_scales():
    m = Tiny()
    with torch.no_grad():
        m.bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 0.0]))
    assert bn_l1(m)().item() == pytest.approx(3.5)


def test_channel_dropout_targets_only_the_weakest_channels_and_only_in_training():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 8, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1, 9, dtype=torch.float32).reshape(8, 1, 1, 1))
    head = nn.Linear(8, 2)
    model = nn.Sequential(conv, nn.Flatten(), head)
    mods = add_channel_dropout(model, rate=0.5, fraction=0.25, seed=0)
    assert mods == [conv]  # the classifier is left alone
    dropped = torch.zeros(8)
    model.train()  # the weights are 1..8: the lowest quarter is channels 0 and 1
    for _ in range(200):
        dropped += (conv.weight.reshape(8) == 0).float()
    assert dropped[:2].min() > 50 and dropped[2:].sum() == 0  # only the lowest quarter
    model.eval()
    assert torch.equal(conv.weight.reshape(8), torch.arange(1, 9, dtype=torch.float32))
    remove_channel_dropout(mods)
    assert not hasattr(conv, "parametrizations")
    assert torch.equal(conv.weight.reshape(8), torch.arange(1, 9, dtype=torch.float32))


def test_untargeted_dropout_drops_any_channel():
    conv = nn.Conv2d(1, 8, 1, bias=False)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(8, 2)).train()
    mods = add_channel_dropout(model, rate=0.5, fraction=1.0, seed=0)
    seen = torch.zeros(8)
    for _ in range(100):
        seen += (conv.weight.reshape(8, -1).abs().sum(1) == 0).float()
    assert (seen > 20).all()
    remove_channel_dropout(mods)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_group_lasso_drives_whole_channel_groups_towards_zero(digits):
    """The effect the option exists for: with the penalty, channels of a deep layer shrink to
    a small share of its strongest; without it none do (same seed, same epochs). AdamW keeps
    them from exact zeros; pruning then removes them at little cost."""
    from models import create_model

    weak = {}
    for lam in (0.0, 0.02):
        torch.manual_seed(0)
        m = create_model("small_cnn", 1, 10, 8)
        st = SparsityTraining(m, torch.zeros(1, 1, 8, 8), TrainConfig(group_lasso=lam))
        fit(m, digits.x_train, digits.y_train, epochs=6, batch_size=64, lr=3e-3,
            loss_fn=st.wrap(cross_entropy))
        st.close()
        conv = m.features[3][0]
        n = conv.weight.detach().reshape(conv.out_channels, -1).norm(dim=1)
        weak[lam] = int((n < 0.4 * n.max()).sum())
    assert weak[0.02] >= 8 and weak[0.0] == 0, weak


def test_options_are_recipe_keys_with_named_errors():
    from pipeline.config import load_recipe
    from pipeline.errors import UsageError

    r = load_recipe(None, {"train.group_lasso": 1e-4, "train.targeted_dropout": 0.3})
    assert r.train.group_lasso == 1e-4 and r.train.targeted_fraction == 0.5
    for key, value in (("train.group_lasso", -1), ("train.targeted_dropout", 1.0),
                       ("train.dropout", -0.1), ("train.targeted_fraction", 0)):
        with pytest.raises(UsageError, match=f"recipe key {key}"):
            load_recipe(None, {key: value})
    with pytest.raises(UsageError, match="choose one"):
        load_recipe(None, {"train.targeted_dropout": 0.3, "train.dropout": 0.3})
