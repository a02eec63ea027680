"""Depth pruning under a latency target: residual blocks found by their skip path, removed
exactly, weighed against channel steps by the planner, and replayed from the saved plan."""

from __future__ import annotations

import copy

import numpy as np
import torch

from models import create_model
from pipeline.prune.blocks import add_block_groups, remove_blocks, residual_blocks
from pipeline.prune.latency import planner_terms
from pipeline.prune.plan import apply_plan
from pipeline.prune.surgery import _prune_copy
from pipeline.prune.widths import _analyse, _Analysis, _Group, _plan_widths, floor_widths


def _resnet20():
    torch.manual_seed(0)
    return create_model("resnet20", 3, 10, 32).eval(), torch.randn(2, 3, 32, 32)


def test_the_blocks_are_the_innermost_modules_with_a_skip_path_around_their_layers():
    model, x = _resnet20()
    blocks = residual_blocks(model, x[:1], ["fc"])
    # 9 blocks, of which layers.3 and layers.6 change the width and stride: no identity skip
    assert blocks == [f"layers.{i}" for i in (0, 1, 2, 4, 5, 7, 8)]
    plain = create_model("small_cnn", 1, 10, 8).eval()
    assert residual_blocks(plain, torch.randn(1, 1, 8, 8), ["classifier"]) == []


class _Gated(torch.nn.Module):
    def __init__(self, residual: bool):
        super().__init__()
        self.conv, self.residual = torch.nn.Conv2d(4, 4, 1), residual

    def forward(self, x):
        return x + self.conv(x) if self.residual else x * torch.sigmoid(self.conv(x))


def test_a_gate_that_multiplies_its_input_is_no_skip_path():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), _Gated(False), _Gated(True))
    assert residual_blocks(model, torch.randn(1, 3, 4, 4), []) == ["2"]


def test_a_removed_block_computes_what_the_block_computes_with_its_branch_silenced():
    model, x = _resnet20()
    silenced = copy.deepcopy(model)
    with torch.no_grad():
        silenced.layers[1].bn2.weight.zero_()
        silenced.layers[1].bn2.bias.zero_()
    removed = remove_blocks(copy.deepcopy(model), ["layers.1"])
    assert isinstance(removed.layers[1], torch.nn.Identity)
    with torch.no_grad():
        assert torch.allclose(removed(x), silenced(x), atol=1e-5)
        assert not torch.allclose(removed(x), model(x), atol=1e-3)


def _width_and_block(block_loss: float, max_blocks: int = 1) -> _Analysis:
    """A 32-channel group whose layers take 1 ms at full width, and a block holding 0.5 ms
    that no width changes; 0.1 ms besides."""
    groups = [_Group("g", 32, [32, 24, 16, 8]), _Group("b", 1, [1, 0], block=True)]
    ana = _Analysis(groups, [(1.0, (0,)), (0.5, (1,))], 0.1, [], by_saving=True)
    ana.losses = {0: np.array([0, 0.01, 0.02, 0.03]), 1: np.array([0, block_loss])}
    ana.max_blocks = max_blocks
    return ana


def test_the_planner_removes_a_block_that_saves_more_time_per_loss_than_narrowing():
    assert _plan_widths(_width_and_block(0.005), budget=1.2) == {0: 32, 1: 0}
    assert _plan_widths(_width_and_block(0.5), budget=1.2) == {0: 16, 1: 1}


def test_a_removed_block_that_leaves_time_unspent_is_traded_for_channels_that_lose_less():
    """The block saves the most time per loss, so the greedy takes it (1.1 ms of 1.5) first;
    narrowing one step instead fits too (1.35 ms) and loses 0.01 against the block's 0.015."""
    assert _plan_widths(_width_and_block(0.015), budget=1.5) == {0: 24, 1: 1}


def test_no_more_blocks_go_than_max_blocks_and_the_floor_counts_the_ones_that_may():
    ana = _width_and_block(0.005, max_blocks=0)
    assert _plan_widths(ana, budget=0.2)[1] == 1
    assert floor_widths(ana) == {0: 8, 1: 1}
    assert floor_widths(_width_and_block(0.005)) == {0: 8, 1: 0}


def test_an_operator_inside_a_block_goes_with_it_fixed_part_and_all():
    table = {
        "overhead_ms": 0.1,
        "events": [
            {
                "event": "Convolution",
                "groups": [0],
                "layer": "stem.0",
                "fixed": 0.2,
                "per_width": 1,
            },
            {
                "event": "Add",
                "groups": [0],
                "layer": "layers.1.conv2",
                "fixed": 0.3,
                "per_width": 2,
            },
        ],
    }
    ana = _Analysis([_Group("g", 8, [8, 4]), _Group("layers.1", 1, [1, 0], block=True)], [], 0, [])
    terms, const = planner_terms(table, ana)
    assert abs(const - 0.3) < 1e-12  # the call and the stem's fixed part
    assert sorted(terms) == sorted([(1, (0,)), (2, (0, 1)), (0.3, (1,))])


def test_a_plan_that_removes_blocks_rebuilds_the_pruned_model_from_a_fresh_one():
    model, x = _resnet20()
    ana = _analyse(model, x[:1], (), 8, "macs", None)
    add_block_groups(ana, model, x[:1], 0.25)
    blocks = {g.root: gi for gi, g in enumerate(ana.groups) if g.block}
    pruned, record = _prune_copy(model, x[:1], ana, {blocks["layers.4"]: 0}, "l2", 8, None, 0)
    assert record["removed_blocks"] == ["layers.4"]
    rebuilt = apply_plan(_resnet20()[0], record, x[:1])
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), pruned(x), atol=1e-6)
    assert isinstance(rebuilt.layers[4], torch.nn.Identity)


def test_the_overhead_splits_into_per_call_and_per_operator_by_the_program_without_blocks():
    """0.02 ms per call and 0.02 ms per operator outside the profiled events: a program with
    half the operators leaves 0.06 ms outside them, not the full program's 0.10."""
    from pipeline.prune.latency import _split_overhead

    events = [{"event": "Convolution", "groups": [], "fixed": 0.1, "per_width": 0.0}] * 4
    table = {"events": events, "overhead_ms": 0.10}
    depth = {"ops": [("Convolution", 0.1)] * 2, "total_ms": 0.2 + 0.06}
    split = _split_overhead(table, depth)
    assert abs(split["overhead_ms"] - 0.02) < 1e-9 and abs(split["per_operator_ms"] - 0.02) < 1e-9
    terms, const = planner_terms(split)
    assert abs(const + sum(w for w, _ in terms) - 0.5) < 1e-9  # the full program's time kept
