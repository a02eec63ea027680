"""The planner: the dependency graph read once into groups and a counted cost model, and the
kept width of every group chosen from the widths round_to allows (see the package docstring)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch_pruning as tp
from torch import nn

from pipeline.prune.graph import (
    _all_groups,
    _attention_modules,
    _build_graph,
    _expand,
    _ignored_modules,
    _out_channel_groups,
    _output_layers,
)

_ROOT_TYPES = [tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM]


def _removed_layers(dg, names: dict, group) -> list[str]:
    """The conv/linear/LSTM layers whose output channels the group removes, in group order."""
    return [
        names[d.target.module]
        for d, _ in group
        if isinstance(d.target.module, tuple(_ROOT_TYPES))
        and dg.is_out_channel_pruning_fn(d.handler)
    ]


@dataclass
class _Group:
    root: str  # module name of the group's root layer
    size: int  # channels, or heads for attention
    choices: list[int]  # allowed kept units, descending, choices[0] == size
    qkv: str | None = None  # attention: the fused qkv linear whose heads go
    frozen: str | None = None  # why the group keeps its width, when it must
    block: bool = False  # a residual block (prune/blocks.py): kept 1 or removed 0


@dataclass
class _Analysis:
    groups: list[_Group]
    terms: list[tuple[float, tuple[int, ...]]]  # (dense cost, groups whose fractions scale it)
    const: float  # cost no group changes (or the model cannot see)
    ignored: list[str]
    num_heads: dict[str, int] = field(default_factory=dict)  # qkv name -> heads
    head_ratio: float | None = None
    member: dict[str, tuple[int, ...]] = field(default_factory=dict)  # layer -> its groups
    out_of: dict[str, int] = field(default_factory=dict)  # layer -> group of its outputs
    by_saving: bool = False  # plan by time saved per loss added (a measured target)
    losses: dict[int, object] = field(default_factory=dict)  # group -> loss at each choice
    max_blocks: int = 0  # how many block groups may be removed

    @property
    def blocks(self) -> list[int]:
        """The residual-block groups (prune/blocks.py)."""
        return [gi for gi, g in enumerate(self.groups) if g.block]


def _analyse(
    model, example, ignored_layers, round_to, target, head_pruning_ratio, min_width=0.25
) -> _Analysis:
    m = copy.deepcopy(model).eval()
    names = {mod: n for n, mod in m.named_modules()}
    dg = _build_graph(m, example)
    # the layers that emit the outputs keep their width: the class count is not a width
    ignored = list(dict.fromkeys(_ignored_modules(m, ignored_layers) + _output_layers(dg, names)))
    found, failed = _all_groups(dg, names, _expand(m, ignored), _ROOT_TYPES)
    ignored += list(failed)  # left as they are; the plan lists them as frozen, with why
    ignored_mods = _expand(m, ignored)
    num_heads = {a.qkv: int(a.num_heads) for a in _attention_modules(m).values()}
    width = {n: dg.get_out_channels(mod) for mod, n in names.items() if n in failed}
    groups = [_Group(n, width[n], [width[n]], frozen=why) for n, why in failed.items()]
    member, out_of = {}, {}
    for group in found:
        gi = len(groups)
        groups.append(
            _group(dg, group, names, num_heads, round_to or 1, head_pruning_ratio, min_width)
        )
        for dep, _ in group:
            t = dep.target.module
            if isinstance(t, nn.Module):
                member.setdefault(t, set()).add(gi)
                if dg.is_out_channel_pruning_fn(dep.handler):
                    out_of.setdefault(t, gi)
    # cost terms: dense cost of each layer x the keep-fractions of the groups that shape it;
    # a measured target (latency) brings its own, fitted by its caller (prune/budget.py)
    terms, const = [], 0.0
    if isinstance(target, str):
        terms, total = (
            _channel_terms(names, set(ignored_mods), out_of)
            if target == "channels"
            else _counted_terms(m, example, target, member)
        )
        const = total - sum(w for w, _ in terms)
    return _Analysis(
        groups,
        terms,
        const,
        ignored,
        {names[q]: h for q, h in num_heads.items()},
        head_pruning_ratio,
        {names[mod]: tuple(sorted(gs)) for mod, gs in member.items() if mod in names},
        {names[mod]: gi for mod, gi in out_of.items() if mod in names},
    )


def _group(dg, group, names, num_heads, step, head_pruning_ratio, min_width) -> _Group:
    """The group's size and the kept units it may take: channels in steps of round_to down to
    the floor (min_width of the width, at least one step), or attention heads (down to
    min_width of them, at least one, unless the recipe fixes the head ratio)."""
    root = group[0][0].target.module
    targets = [d.target.module for d, _ in group if isinstance(d.target.module, nn.Module)]
    qkv = [
        d.target.module
        for d, _ in group
        if d.target.module in num_heads and dg.is_out_channel_pruning_fn(d.handler)
    ]
    size = dg.get_out_channels(root)
    if qkv:
        h = num_heads[qkv[0]]
        if head_pruning_ratio is None:  # planned like channels, one head at a time, to a floor
            choices = list(range(h, max(1, math.ceil(min_width * h - 1e-9)) - 1, -1))
        else:  # fixed by the recipe; MetaPruner removes ceil(ratio * heads)
            k = max(1, h - math.ceil(head_pruning_ratio * h - 1e-9))
            choices = [h, k] if k < h else [h]
        return _Group(names[root], h, choices, names[qkv[0]])
    grouped = [t for t in targets if _out_channel_groups(dg, t) > 1]
    other = [t for t in grouped if not _narrowable(t)]
    if other:
        return _Group(names[root], size, [size], frozen=_grouped_why(other[0], names))
    # a grouped conv loses the same channels in every group: widths that split evenly
    step = math.lcm(step, *(t.groups for t in grouped))
    floor = min(size, max(step, math.ceil(min_width * size / step) * step))
    return _Group(
        names[root], size, [size] + list(range((size - 1) // step * step, floor - 1, -step))
    )


def _narrowable(module) -> bool:
    """A grouped (not transposed) conv: torch-pruning narrows every group alike."""
    return isinstance(module, nn.Conv2d) and not module.transposed


def _grouped_why(module, names) -> str:
    return (
        f"its channels pass through {names[module]!r} ({type(module).__name__} with channel "
        "groups), which torch-pruning cannot narrow while keeping its groups whole"
    )


def _channel_terms(names, skip, out_of) -> tuple[list, float]:
    """Channels target: every conv/linear width, scaled by the group that prunes its output."""
    terms, total = [], 0.0
    for mod in names:
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod not in skip:
            w = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
            terms.append((float(w), (out_of[mod],) if mod in out_of else ()))
            total += w
    return terms, total


def _counted_terms(m, example, target, member) -> tuple[list, float]:
    """MACs/params target: every leaf module's count, scaled by all the groups it belongs to."""
    macs, params, layer_macs, layer_params = tp.utils.count_ops_and_params(
        m, example, layer_wise=True
    )
    per = layer_macs if target == "macs" else layer_params
    terms = []
    for mod in m.modules():
        if next(mod.children(), None) is not None or not per.get(mod):
            continue
        terms.append((float(per[mod]), tuple(sorted(member.get(mod, ())))))
    return terms, float(macs if target == "macs" else params)


def _step_value(ana: _Analysis, idx: dict[int, int], gi: int) -> tuple:
    """Which group steps down next. Counted targets: the one that stays widest after the step,
    so the layers shrink about evenly. A measured target (latency): the step that saves the
    most predicted time per loss it adds (prune/sensitivity.py), the greedy form of HALP's
    knapsack (Shen et al. 2022); a group without measured losses counts each channel as an
    equal share of the group."""
    g = ana.groups[gi]
    after = g.choices[idx[gi] + 1]
    if not ana.by_saving:
        return (after / g.size, g.size)
    kept = _kept(ana, idx)
    saved = predicted_cost(ana, kept) - predicted_cost(ana, {**kept, gi: after})
    lost = _loss_at(ana, gi, idx[gi] + 1) - _loss_at(ana, gi, idx[gi])
    return (saved / max(lost, 1e-12), after / g.size)


def _loss_at(ana: _Analysis, gi: int, i: int) -> float:
    """A group's loss at its i-th choice (without measured losses: the share of its channels
    gone)."""
    curve, g = ana.losses.get(gi), ana.groups[gi]
    return float(curve[i]) if curve is not None else (g.size - g.choices[i]) / g.size


def predicted_cost(ana: _Analysis, kept: dict[int, int]) -> float:
    """The cost model's figure for kept units per group (a group not listed keeps all)."""
    frac = [kept.get(gi, g.size) / g.size for gi, g in enumerate(ana.groups)]
    return ana.const + sum(w * math.prod(frac[g] for g in gs) for w, gs in ana.terms)


def floor_widths(ana: _Analysis) -> dict[int, int]:
    """Every group at its floor, and the max_blocks blocks whose removal then saves most."""
    kept = {gi: g.choices[-1] for gi, g in enumerate(ana.groups) if not g.block}
    blocks = ana.blocks
    full = predicted_cost(ana, kept)
    saves = {gi: full - predicted_cost(ana, {**kept, gi: 0}) for gi in blocks}
    gone = sorted(blocks, key=saves.get, reverse=True)[: ana.max_blocks]
    return {**kept, **{gi: 0 if gi in gone else 1 for gi in blocks}}


def _may_step(ana: _Analysis, idx: dict[int, int], gi: int) -> bool:
    """A group may narrow further: it has a narrower choice, its heads are not fixed by the
    recipe, and a block goes only while fewer than max_blocks have gone."""
    g = ana.groups[gi]
    if idx[gi] + 1 >= len(g.choices) or (g.qkv is not None and ana.head_ratio is not None):
        return False
    return not g.block or sum(idx[i] for i in ana.blocks) < ana.max_blocks


def _plan_widths(ana: _Analysis, budget: float) -> dict[int, int]:
    """Kept units per group: step down the group that stays widest, then give steps back; for
    a measured target, then trade removed blocks back for narrower channels (_traded)."""
    idx = {gi: 0 for gi in range(len(ana.groups))}
    # a recipe-fixed head count is not planned: take it at once
    for gi, g in enumerate(ana.groups):
        if g.qkv is not None and ana.head_ratio is not None:
            idx[gi] = len(g.choices) - 1
    _descend(ana, idx, budget, set(idx))
    _give_back(ana, idx, budget)
    if ana.by_saving:
        idx = _traded(ana, idx, budget)
    return _kept(ana, idx)


def _kept(ana: _Analysis, idx: dict[int, int]) -> dict[int, int]:
    return {gi: ana.groups[gi].choices[i] for gi, i in idx.items()}


def _descend(ana: _Analysis, idx: dict[int, int], budget: float, movable: set[int]) -> None:
    """Step down the movable group with the best _step_value until the cost fits."""
    while predicted_cost(ana, _kept(ana, idx)) > budget:
        cand = [gi for gi in movable if _may_step(ana, idx, gi)]
        if not cand:
            return
        gi = max(cand, key=lambda i: _step_value(ana, idx, i))
        idx[gi] += 1


def _give_back(ana: _Analysis, idx: dict[int, int], budget: float) -> None:
    """Give back steps while the budget allows, narrowest groups first."""
    groups, changed = ana.groups, True
    while changed:
        changed = False
        for gi in sorted(idx, key=lambda i: groups[i].choices[idx[i]] / groups[i].size):
            if idx[gi] == 0 or (groups[gi].qkv is not None and ana.head_ratio is not None):
                continue
            idx[gi] -= 1
            if predicted_cost(ana, _kept(ana, idx)) <= budget:
                changed = True
            else:
                idx[gi] += 1


def _traded(ana: _Analysis, idx: dict[int, int], budget: float) -> dict[int, int]:
    """The greedy stops on the step that crosses the budget, and a removed block is a big step:
    it can leave a tenth of the time unspent (ResNet-20 fp32 at half its latency: 0.44). So each
    removed block is tried back, the time it costs found by narrowing channels alone; a trade
    that fits and loses less (the summed losses of the steps taken) is kept, until none is."""
    channels = {gi for gi in idx if not ana.groups[gi].block}
    while True:
        for b in [gi for gi in ana.blocks if idx[gi] > 0]:
            trial = {**idx, b: 0}
            _descend(ana, trial, budget, channels)
            _give_back(ana, trial, budget)
            fits = predicted_cost(ana, _kept(ana, trial)) <= budget
            if fits and _plan_loss(ana, trial) < _plan_loss(ana, idx) - 1e-12:
                idx = trial
                break
        else:
            return idx


def _plan_loss(ana: _Analysis, idx: dict[int, int]) -> float:
    """The summed loss of the steps a plan takes."""
    return sum(_loss_at(ana, gi, i) for gi, i in idx.items())
