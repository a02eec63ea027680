"""Pruning library architectures (issue 26): torchvision and timm models the zoo does not have,
built as `--model torchvision:NAME` / `timm:NAME` builds them (10 classes, 32x32 RGB, random
weights), each pruned to half the MACs or refused in one line that names a layer or the recipe
key that fixes it; never a traceback. Every pruned group is verified exactly or listed as
unverified with the reason, and every group left at its width is listed with the reason."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from ground.errors import UsageError
from models import create_model
from pipeline.prune import prune_to_macs

pytestmark = pytest.mark.slow  # measured: 85 s in all on 2 shared cores (densenet121: 22 s)

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
MIN_WIDTH = 0.25  # prune()'s default prune.min_width
SLACK = 1.1  # prune() accepts a result within 10 % of the target and refuses anything else

# name -> the structure it brings that the zoo lacks
ARCHS = {
    "torchvision:resnext50_32x4d": "grouped 3x3 convs (groups=32) in bottlenecks",
    "torchvision:shufflenet_v2_x0_5": "channel split, concat and channel shuffle (view/transpose)",
    "torchvision:squeezenet1_1": "fire modules (concat of 1x1 and 3x3), 1x1-conv classifier",
    "torchvision:densenet121": "dense blocks: every layer concatenated to its input",
    "timm:convnext_atto": "LayerNorm over channels, layer scale, depthwise 7x7",
    "torchvision:regnet_x_400mf": "grouped convs with group width 16",
    "torchvision:efficientnet_b0": "squeeze-excitation, SiLU, stochastic depth",
    "timm:mobilevit_xxs": "attention over unfolded patches inside a convnet",
    "timm:ghostnet_050": "ghost modules (cheap depthwise features concatenated and sliced)",
    "torchvision:mnasnet0_5": "inverted residuals found by architecture search",
    "torchvision:mobilenet_v3_small": "hard-swish, squeeze-excitation with hard-sigmoid",
    "torchvision:googlenet": "inception modules: four branches concatenated",
    "timm:efficientvit_b0": "linear attention with grouped multi-scale convs",
    "timm:deit_tiny_patch16_224": "a vision transformer (qkv attention, class token)",
    "timm:mixer_s16_224": "MLP-Mixer: linear layers across tokens and across channels",
    "timm:resnext26ts": "timm's ResNeXt: grouped convs, SiLU, a tiered stem",
}


@functools.cache
def _pruned(arch: str):
    """(dense model, PruneResult) or (dense model, UsageError): each model pruned once."""
    torch.manual_seed(0)
    model = create_model(arch, 3, 10, 32).eval()
    try:
        return model, prune_to_macs(model, X, 0.5)
    except UsageError as e:  # any other exception fails the test with its traceback
        return model, e


@pytest.mark.parametrize("arch", ARCHS)
def test_a_library_architecture_prunes_to_half_the_macs_or_refuses_in_one_line(arch):
    model, res = _pruned(arch)
    if isinstance(res, UsageError):
        msg = str(res)
        assert "\n" not in msg and msg.startswith("prune"), msg
        assert "prune.ignored_layers" in msg or "prune.min_width" in msg, msg
        return
    assert res.fraction_reached <= 0.5 * SLACK and res.macs_after <= 0.5 * SLACK * res.macs_before
    with torch.no_grad():
        assert res.model(X).shape == model(X).shape == (1, 10)
    plan = res.plan
    # every pruned group is accounted for: checked exactly, or listed with why it is not
    pruned = {entry[0] for entry in plan["history"]}
    assert set(plan["verified"]) | set(plan["unverified"]) == pruned
    assert not set(plan["verified"]) & set(plan["unverified"])
    assert set(plan["unverified"]) == set(plan["unverified_why"])
    reasons = [*plan["unverified_why"].values(), *plan["frozen"].values()]
    assert all(why and "\n" not in why for why in reasons), reasons
    assert not set(plan["frozen"]) & pruned  # a group left at its width was not cut
    # no width falls below its floor (prune.min_width, 0.25 of it); those cut to it are listed
    # in plan["floored"], which prune() logs as a warning line
    before, after = plan["widths"]["before"], plan["widths"]["after"]
    low = {n: (before[n], w) for n, w in after.items() if w < MIN_WIDTH * before[n]}
    assert not low, low


def test_the_callers_model_is_left_as_it_was():
    model, res = _pruned("torchvision:googlenet")
    assert not isinstance(res, UsageError)
    assert sum(p.numel() for p in model.parameters()) > res.params_after
    assert model.inception3a.branch1.conv.out_channels == 64


def test_channel_shuffle_groups_torch_pruning_cannot_follow_are_left_with_the_reason():
    """torchvision's ShuffleNetV2 made torch-pruning 1.6.1 divide by zero (a reshape sized as
    0 channels) and then fail with IndexError on the groups through the shuffle; those groups
    now keep their width, named with the reason, and the branches prune."""
    _, res = _pruned("torchvision:shufflenet_v2_x0_5")
    frozen = res.plan["frozen"]
    assert (
        "stage2.1.branch2.5" in frozen
        and "cannot follow its channels" in frozen["stage2.1.branch2.5"]
    )
    assert res.plan["verified"] and res.fraction_reached <= 0.5 * SLACK


def test_grouped_convs_lose_the_same_channels_in_every_group_and_are_verified():
    """ResNeXt's grouped 3x3 convs (groups=32) are narrowed group by group: their widths stay a
    multiple of the group count, and each is checked exactly like an ungrouped conv."""
    model, res = _pruned("torchvision:resnext50_32x4d")
    convs = {n: m for n, m in res.model.named_modules() if isinstance(m, nn.Conv2d)}
    grouped = {n: m for n, m in convs.items() if m.groups > 1}
    assert grouped and not res.plan["frozen"]
    for name, conv in grouped.items():
        assert conv.groups == 32 and conv.in_channels % 32 == conv.out_channels % 32 == 0, name
    assert res.model.layer1[0].conv2.out_channels < model.layer1[0].conv2.out_channels
    assert "layer1.0.conv2" in res.plan["verified"]
