"""The plan that keeps the most MACs for the time: the reference against which the latency
planner's speed-up ÷ MAC reduction is judged (issue 27, check 3).

The latency planner spends each step's saved time against the divergence it adds to the
outputs, so it may cut MACs that a plan judged by MACs alone would keep. This plan uses the same
latency table, budget, floors and block limit, but each step's loss is the fraction of the
model's MACs it removes. It is not re-aimed on the measured program (no budget loop): it lands
where the table predicts."""

from __future__ import annotations

import copy

import numpy as np
import torch_pruning as tp

from pipeline.prune.blocks import add_block_groups, inside
from pipeline.prune.budget import _copier
from pipeline.prune.surgery import _prune_copy
from pipeline.prune.widths import _analyse, _plan_widths, predicted_cost

ROUND_TO, SEED = 8, 0  # prune()'s defaults, so that the latency table is the case's, cached


def mac_keeping_plan(model, example, cost, fraction: float, min_width: float):
    """(pruned copy, the table's predicted fraction of the dense latency, removed blocks)."""
    ana = _analyse(model, example, (), ROUND_TO, cost, None, min_width)
    if cost.depth:
        add_block_groups(ana, model, example, min_width)
    # now_ms 1: the table in units of the dense program's time, so the budget is the fraction
    ana.terms, ana.const = cost.fitted(model, example, ana, _copier(ROUND_TO, SEED), 1.0)
    ana.by_saving, ana.losses = True, _mac_losses(model, example, ana)
    kept = _plan_widths(ana, fraction)
    pruned, record = _prune_copy(model, example, ana, kept, "l2", ROUND_TO, None, SEED)
    return pruned, predicted_cost(ana, kept), record["removed_blocks"]


def _mac_losses(model, example, ana) -> dict:
    """Per group that may narrow: the fraction of the model's MACs gone at each of its choices
    (counted per layer, scaled by the keep-fractions of the groups and blocks that hold it)."""
    _, _, per_layer, _ = tp.utils.count_ops_and_params(model, example, layer_wise=True)
    roots = [(gi, ana.groups[gi].root) for gi in ana.blocks]
    terms = [
        (float(per_layer[m]), ana.member.get(n, ()) + tuple(gi for gi, r in roots if inside(n, r)))
        for n, m in model.named_modules()
        if next(m.children(), None) is None and per_layer.get(m)
    ]
    macs = copy.copy(ana)
    macs.terms, macs.const = terms, 0.0
    full = predicted_cost(macs, {})
    return {
        gi: np.array([full - predicted_cost(macs, {gi: c}) for c in g.choices]) / full
        for gi, g in enumerate(ana.groups)
        if len(g.choices) > 1 and not g.frozen
    }
