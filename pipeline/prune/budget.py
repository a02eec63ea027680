"""Meeting an absolute budget: planned widths aimed again while the count misses (scope
"local"), or torch-pruning's one global ratio bisected (scope "global"); the best attempt is
verified and kept."""

from __future__ import annotations

import copy

from pipeline.prune.checks import _verify
from pipeline.prune.counting import measure
from pipeline.prune.plan import _pruned_attributes
from pipeline.prune.surgery import _prune_copy
from pipeline.prune.widths import _analyse, _plan_widths


def _prune_step(
    model,
    example,
    budget,
    target,
    importance,
    round_to,
    ignored_layers,
    data,
    head_pruning_ratio,
    seed,
):
    """Plan widths for an absolute budget, prune a copy, correct the budget if the count
    missed; returns the pruned copy and the step record (history, attributes, checks)."""
    ana = _analyse(model, example, ignored_layers, round_to, target, head_pruning_ratio)
    current = measure(model, example, target, ignored_layers)
    if budget >= current:
        return copy.deepcopy(model).eval(), {
            "history": [],
            "attributes": _pruned_attributes(model),
            "verified": [],
            "unverified": [],
        }
    best = None  # (cost, pruned, record) with cost <= budget, else the smallest cost
    goal, tried = budget, set()
    for attempt in range(8):
        kept = _plan_widths(ana, goal)
        key = tuple(sorted(kept.items()))
        if key in tried:  # the correction did not change the plan
            if best[0] <= budget:
                break
            goal *= 0.99  # still over: aim lower until the plan changes
            continue
        tried.add(key)
        pruned, record = _prune_copy(model, example, ana, kept, importance, round_to, data, seed)
        cost = measure(pruned, example, target, ignored_layers)
        fits = cost <= budget
        if _better(best, cost, budget):
            best = (cost, pruned, record)
        if fits and cost >= 0.97 * budget:
            break
        goal *= budget / cost  # the cost model missed by cost/goal: aim again
    cost, pruned, record = best
    record.update(_verify(model, pruned, example, record["history"]))
    return pruned, record


def _prune_global(
    model,
    example,
    budget,
    target,
    importance,
    round_to,
    ignored_layers,
    data,
    head_pruning_ratio,
    seed,
):
    """torch-pruning's global ranking, its ratio bisected so that the cost fits the budget.

    The cost is not monotone in the ratio when round_to is coarse (a group rounded to zero
    channels is left whole), so the best attempt seen is kept: the largest cost that fits,
    else the smallest cost."""
    ana = _analyse(model, example, ignored_layers, round_to, target, head_pruning_ratio)
    best, lo, hi = None, 0.0, 0.9
    while hi - lo > 0.004:
        r = (lo + hi) / 2
        pruned, record = _prune_copy(
            model, example, ana, None, importance, round_to, data, seed, global_ratio=r
        )
        cost = measure(pruned, example, target, ignored_layers)
        fits = cost <= budget
        if _better(best, cost, budget):
            best = (cost, pruned, record)
        if fits:
            hi = r
        else:
            lo = r
    _, pruned, record = best
    record.update(_verify(model, pruned, example, record["history"]))
    return pruned, record


def _better(best, cost, budget) -> bool:
    """The first attempt; one that fits and is larger than the best (or the best does not
    fit); one that does not fit but is smaller than a best that does not fit either."""
    fits = cost <= budget
    return (
        best is None
        or (fits and (best[0] > budget or cost > best[0]))
        or (not fits and best[0] > budget and cost < best[0])
    )
