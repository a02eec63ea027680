"""Meeting an absolute budget: planned widths aimed again while the count misses (scope
"local"), or torch-pruning's one global ratio bisected (scope "global"); the best attempt is
verified and kept."""

from __future__ import annotations

import copy

from ground.errors import UsageError
from ground.log import log
from pipeline.prune.blocks import add_block_groups, inside
from pipeline.prune.checks import _verify
from pipeline.prune.counting import channels, measure
from pipeline.prune.graph import GroupFailure, _all_groups, _build_graph, _expand
from pipeline.prune.latency import fixed_ms
from pipeline.prune.plan import _pruned_attributes
from pipeline.prune.sensitivity import group_losses, mac_losses
from pipeline.prune.surgery import IMPORTANCE_FACTORIES, _prune_copy
from pipeline.prune.widths import (
    _ROOT_TYPES,
    _analyse,
    _plan_widths,
    _removed_layers,
    floor_widths,
    predicted_cost,
)


def _plan_and_prune(
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
    min_width=0.25,
):
    """Plan widths for an absolute budget, prune a copy, correct the budget if the count
    missed; returns the pruned copy and the step record (history, attributes, checks)."""
    ana = _analyse(model, example, ignored_layers, round_to, target, head_pruning_ratio, min_width)
    current = measure(model, example, target, ignored_layers)
    if not isinstance(target, str):  # a measured target: its table, fitted on copies
        tabled(ana, model, example, target, round_to, seed, min_width, current)
        _reachable(ana, target, budget, current, min_width)
        if target.weighing == "macs":
            ana.losses = mac_losses(model, example, ana)
        else:
            images = target.calibration if data is None else data[0]
            ana.losses = group_losses(model, example, ana, importance, round_to, data, seed, images)
    if budget >= current:
        return copy.deepcopy(model).eval(), {
            "history": [],
            "attributes": _pruned_attributes(model),
            "verified": [],
            "unverified": [],
            **_spread(ana, {}),
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
        cost = _judged(pruned, example, target, ignored_layers, budget)
        fits = cost <= budget
        if _better(best, cost, budget):
            best = (cost, pruned, {**record, **_spread(ana, kept), **_predicted(ana, target, kept)})
        if fits and cost >= 0.97 * budget:
            break
        goal *= budget / cost  # the cost model missed by cost/goal: aim again
    cost, pruned, record = best
    record.update(_verify(model, pruned, example, record["history"]))
    return pruned, record


def tabled(ana, model, example, target, round_to, seed, min_width, now: float) -> None:
    """A measured target's planning form of the analysis: the residual blocks as groups (when
    the target may remove them) and its latency table, scaled to `now`, as the cost terms."""
    if target.depth:
        add_block_groups(ana, model, example, min_width)
    ana.terms, ana.const = target.fitted(model, example, ana, _copier(round_to, seed), now)
    ana.by_saving = True


def _predicted(ana, target, kept) -> dict:
    """A measured target's table prediction for the widths, beside what was measured."""
    return {} if isinstance(target, str) else {"predicted": predicted_cost(ana, kept)}


def _copier(round_to, seed):
    """Pruned copies at given widths for a measured target's table (which channels go does
    not change latency: magnitude picks them)."""

    def prune_copy(model, example, ana, kept):
        return _prune_copy(model, example, ana, kept, "l2", round_to, None, seed)[0]

    return prune_copy


def _reachable(ana, target, budget: float, dense: float, min_width: float) -> None:
    """A budget that the floor (every group at its floor, the most blocks removed) misses by
    more than the 10 % any target may land over (oneshot._reached) is an error, named in
    numbers. Closer than that, the budget loop prunes to the floor and is judged on it."""
    at_floor = floor_widths(ana)
    floor = predicted_cost(ana, at_floor)
    if floor <= 1.1 * budget:
        return
    gone = [g.root for gi, g in enumerate(ana.groups) if g.block and at_floor[gi] == 0]
    call = target.table["overhead_ms"]
    fixed = sum(
        fixed_ms(target.table, e)
        for e in target.table["events"]
        if not any(inside(e.get("layer"), b) for b in gone)
    )
    blocks = f" and {len(gone)} residual block(s) removed" if gone else ""
    raise UsageError(
        f"prune: {target}: a target of {budget:.3g} ms ({budget / dense:.0%} of the dense "
        f"{dense:.3g} ms, {target.how}) cannot be reached: the smallest reachable is {floor:.3g} ms "
        f"({floor / dense:.0%}), every channel group at its floor (prune.min_width "
        f"{min_width:g}){blocks}, of which {call:.3g} ms is the runtime's fixed per-call cost and "
        f"{fixed:.3g} ms the remaining operators' parts that do not shrink with width "
        f"(latency table, fit error up to {target.table['fit_error_max']:.0%}); ask for at "
        f"least {floor / dense:.2f} of the dense latency ({floor:.3g} ms) or lower prune.min_width"
    )


def _global_ratio(
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
    min_width=0.25,
):
    """torch-pruning's global ranking, its ratio bisected so that the cost fits the budget.

    The cost is not monotone in the ratio when round_to is coarse (a group rounded to zero
    channels is left whole), so the best attempt seen is kept: the largest cost that fits,
    else the smallest cost."""
    ana = _analyse(model, example, ignored_layers, round_to, target, head_pruning_ratio, min_width)
    best, lo, hi = None, 0.0, 0.9
    while hi - lo > 0.004:
        r = (lo + hi) / 2
        pruned, record = _prune_copy(
            model, example, ana, None, importance, round_to, data, seed, global_ratio=r
        )
        cost = _judged(pruned, example, target, ignored_layers, budget)
        fits = cost <= budget
        if _better(best, cost, budget):
            best = (cost, pruned, record)
        if fits:
            hi = r
        else:
            lo = r
    _, pruned, record = best
    record.update(_spread(ana, {}))
    record.update(_verify(model, pruned, example, record["history"]))
    return pruned, record


def _judged(pruned, example, target, ignored_layers, budget: float) -> float:
    """An attempt's cost; a measured one that fits is looked at again (confirmed): the loop
    keeps what fits, so it would favour attempts that measured low by chance."""
    cost = measure(pruned, example, target, ignored_layers)
    if cost <= budget and not isinstance(target, str):
        cost = target.confirmed(pruned, example)
    return cost


def _better(best, cost, budget) -> bool:
    """The first attempt; one that fits and is larger than the best (or the best does not
    fit); one that does not fit but is smaller than a best that does not fit either."""
    fits = cost <= budget
    return (
        best is None
        or (fits and (best[0] > budget or cost > best[0]))
        or (not fits and best[0] > budget and cost < best[0])
    )


_MAX_FROZEN = 16


def _freezing(search):
    """`search`, with each channel group torch-pruning cannot prune, trace through or follow
    exactly left as it is (like a prune.ignored_layers entry) and the search run again. Every
    group so left is logged with the reason and recorded in the step's `frozen`. A failure
    that names no group, or one that repeats, stays an error."""

    def run(model, example, budget, target, importance, round_to, ignored, *rest):
        # rest: data, head_pruning_ratio, seed, min_width, as `search` takes them
        frozen: dict[str, str] = {}
        while True:
            skip = tuple(ignored) + tuple(frozen)
            goal = budget - _frozen_channels(model, target, ignored, skip)
            try:
                pruned, record = search(
                    model, example, goal, target, importance, round_to, skip, *rest
                )
            except GroupFailure as e:
                layers = _locate(model, example, skip, [e.root] if e.root else [])
                if not layers or set(layers) & set(frozen) or len(frozen) >= _MAX_FROZEN:
                    raise
                why = e.reason if e.root else "torch-pruning cannot rank its channels"
                log(f"[prune] warning: {', '.join(map(repr, layers))} left as they are: {why}")
                frozen.update(dict.fromkeys(layers, why))
                continue
            record["frozen"] = {**record.get("frozen", {}), **frozen}
            return pruned, record

    return run


def _frozen_channels(model, target, ignored, skip) -> int:
    """Channels target: the frozen layers' channels, which the search no longer counts."""
    if target != "channels" or tuple(ignored) == skip:
        return 0
    return channels(model, tuple(ignored)) - channels(model, skip)


def _locate(model, example, skip, roots) -> list[str]:
    """The layers to leave as they are so that the failing groups are not pruned: every layer
    whose output channels a failing group removes (freezing only its root can leave torch-
    pruning unable to split the rest). A failing group is one rooted at or removing channels
    of `roots`, or when no root is known, one whose channels torch-pruning cannot even rank:
    it ranks every group, pruned or not, so one such group fails any pruning. The index
    mapping is what fails, so the magnitude criterion stands in for the chosen one."""
    m = copy.deepcopy(model).eval()
    names = {mod: n for n, mod in m.named_modules()}
    dg = _build_graph(m, example)
    rank = IMPORTANCE_FACTORIES["l2"]()
    found = list(roots)
    for group in _all_groups(dg, names, _expand(m, skip), _ROOT_TYPES)[0]:
        removed = _removed_layers(dg, names, group)
        named = names[group[0][0].target.module] in roots or set(removed) & set(roots)
        if (roots and not named) or (not roots and _ranks(rank, group)):
            continue
        found += removed
    return list(dict.fromkeys(found))


def _ranks(rank, group) -> bool:
    try:
        rank(group)
        return True
    except Exception:  # noqa: BLE001  (any failure here is the finding)
        return False


def _spread(ana, kept: dict[int, int]) -> dict:
    """Where the cut fell: groups that keep their width because they must (with why), and
    groups the planner took down to their floor."""
    return {
        "frozen": {g.root: g.frozen for g in ana.groups if g.frozen},
        "floored": [
            g.root
            for gi, g in enumerate(ana.groups)
            if len(g.choices) > 1
            and not g.block
            and kept.get(gi) == g.choices[-1]
            and (g.qkv is None or ana.head_ratio is None)  # a recipe's head ratio is no floor
        ],
    }


_prune_step = _freezing(_plan_and_prune)
_prune_global = _freezing(_global_ratio)
