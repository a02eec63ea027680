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
    by_hand = sum(
        torch.sqrt(w1[c].pow(2).sum() + g[c] ** 2 + w2[:, c].pow(2).sum()) for c in range(4)
    )
    by_hand = by_hand + sum(
        torch.sqrt(w2[k].pow(2).sum() + fc[:, k].pow(2).sum()) for k in range(3)
    )
    assert group_lasso(m, x)().item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_bn_l1_is_the_sum_of_absolute_scales():
    m = Tiny()
    with torch.no_grad():
        m.bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 0.0]))
    assert bn_l1(m)().item() == pytest.approx(3.5)


def _one_by_one(weights):
    conv = nn.Conv2d(1, len(weights), 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weights, dtype=torch.float32).reshape(-1, 1, 1, 1))
    return conv


def test_channel_dropout_targets_only_the_weakest_channels_and_only_in_training():
    conv = _one_by_one(range(1, 9))  # filters 1..8: the lowest quarter is channels 0 and 1
    bn, head = nn.BatchNorm2d(8, affine=False), nn.Linear(8, 2)
    model = nn.Sequential(conv, bn, nn.Flatten(), head)
    hooks = add_channel_dropout(model, rate=0.5, fraction=0.25, seed=0)
    assert len(hooks) == 1  # the conv; the classifier is left alone
    x = torch.randn(400, 1, 1, 1)
    model.train()
    out = model[:2](x).reshape(400, 8)
    ref = nn.functional.batch_norm(conv(x), None, None, training=True).reshape(400, 8)
    dropped = (out == 0) & (ref != 0)
    assert dropped[:, :2].float().mean(0).min() > 0.4 and not dropped[:, 2:].any()
    kept = ~dropped[:, :2]  # the kept candidates are scaled as nn.Dropout does; the rest not
    assert torch.allclose(out[:, :2][kept], 2 * ref[:, :2][kept], atol=1e-5)
    assert torch.allclose(out[:, 2:], ref[:, 2:], atol=1e-5)
    # the drop comes after the batch norm: its statistics are those of the undropped conv
    assert torch.allclose(bn.running_var, 0.9 + 0.1 * (conv(x).reshape(400, 8).var(0)), atol=1e-4)
    model.eval()
    assert torch.equal(model[:2](x), bn(conv(x)))
    remove_channel_dropout(hooks)
    model.train()
    assert torch.allclose(model[:2](x).reshape(400, 8), ref, atol=1e-5)


def test_untargeted_dropout_drops_any_channel():
    conv = _one_by_one(range(1, 9))
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(8, 2)).train()
    hooks = add_channel_dropout(model, rate=0.5, fraction=1.0, seed=0)
    out = model[0](torch.ones(100, 1, 1, 1)).reshape(100, 8)
    assert ((out == 0).float().mean(0) > 0.3).all()
    remove_channel_dropout(hooks)


def test_dropout_keeps_an_eval_mode_network_that_trained_with_it_accurate():
    """Zeroing filters before a batch norm left eval mode at chance (ResNet-20, CIFAR-10): the
    norm's running statistics mixed in the zero batches. A conv+BN net trained with heavy
    targeted dropout must score in eval mode about what it scores in training mode."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    hooks = add_channel_dropout(model, rate=0.5, fraction=0.5, seed=0)
    opt = torch.optim.Adam(model.parameters(), 0.01)
    model.train()
    for _ in range(60):
        for i in range(0, 1500, 100):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i : i + 100]), y[i : i + 100]).backward()
            opt.step()
    remove_channel_dropout(hooks)
    model.eval()
    with torch.no_grad():
        acc = (model(x[1500:]).argmax(1) == y[1500:]).float().mean().item()
    assert acc > 0.8, acc


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
        fit(
            m,
            digits.x_train,
            digits.y_train,
            epochs=6,
            batch_size=64,
            lr=3e-3,
            loss_fn=st.wrap(cross_entropy),
        )
        st.close()
        conv = m.features[3][0]
        n = conv.weight.detach().reshape(conv.out_channels, -1).norm(dim=1)
        weak[lam] = int((n < 0.4 * n.max()).sum())
    assert weak[0.02] >= 8 and weak[0.0] == 0, weak


def test_options_are_recipe_keys_with_named_errors():
    from ground.errors import UsageError
    from pipeline.config import load_recipe

    r = load_recipe(None, {"train.group_lasso": 1e-4, "train.targeted_dropout": 0.3})
    assert r.train.group_lasso == 1e-4 and r.train.targeted_fraction == 0.5
    for key, value in (
        ("train.group_lasso", -1),
        ("train.targeted_dropout", 1.0),
        ("train.dropout", -0.1),
        ("train.targeted_fraction", 0),
    ):
        with pytest.raises(UsageError, match=f"recipe key {key}"):
            load_recipe(None, {key: value})
    with pytest.raises(UsageError, match="choose one"):
        load_recipe(None, {"train.targeted_dropout": 0.3, "train.dropout": 0.3})
