"""Structured channel pruning on torch-pruning's dependency graph, to a MAC/parameter/channel
target; iterative pruning with a cubic schedule, lottery-ticket rewinding, and unstructured
magnitude pruning as the comparison that buys no speed.

Removing whole channels is what becomes speed on a phone: every pruned group shrinks the
dense conv/linear kernels XNNPACK runs. The result is recorded as a plan (torch-pruning's
pruning history) so the pruned model can be rebuilt from the zoo factory without pickle.

How a target is met. torch-pruning prunes one ratio per layer and rounds the channels that
remain *down* to a multiple of `round_to`, so one uniform ratio jumps in coarse steps on
narrow layers (a 16-channel layer with round_to=8 is either 16 or 8 wide). The planner here
reads the dependency graph once, writes the counted cost (MACs, parameters or channels) of
every layer as a product of the keep-fractions of the groups that shape it, and chooses the
kept width of every group from the widths round_to allows: it removes one step at a time from
the group that stays widest after the step (so the layers shrink about evenly), then gives
steps back where the budget still allows. The widths become torch-pruning's per-layer
`pruning_ratio_dict` (attention heads: `head_pruning_ratio_dict`); the importance criterion
still picks *which* channels go. The pruned model is counted again, and the budget corrected
if the cost model missed (it leaves out ops outside modules, e.g. ReLU counted as a module).

What is verified. Pruning runs on copies; the caller's model is never modified. After
pruning, every group whose layers are channel-local (conv, linear, batch norm, ...) is checked
exactly: the pruned model must compute what the dense model computes with the removed
channels zeroed where they are produced and where they are consumed. An op torch-pruning does
not know (it treats unknown ops as element-wise: torch.roll over channels, a channel shuffle,
a module with its own weight used in forward) breaks this or crashes, and the error names the
layer and the `prune.ignored_layers` entry that avoids it.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from ground.errors import UsageError
from models import create_from_spec, example_input
from pipeline.config import PRUNE_SCOPES, PRUNE_TARGETS

IMPORTANCE_FACTORIES = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),  # first order (Molchanov et al.)
    "hessian": lambda: tp.importance.GroupHessianImportance(),  # OBD (LeCun et al. 1990)
    "random": lambda: tp.importance.RandomImportance(),  # a control, not a method
}
TARGETS, SCOPES = PRUNE_TARGETS, PRUNE_SCOPES
_ROOT_TYPES = [tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM]
_REL_TOL = 1e-4
_GRAPH_OPS = (
    tp.ops._ElementWiseOp,
    tp.ops._ConcatOp,
    tp.ops._SplitOp,
    tp.ops._ReshapeOp,
    tp.ops._SliceOp,
    tp.ops._ExpandOp,
    tp.ops._UnbindOp,
    tp.ops._OutputOp,
)  # exactness check: max |diff| / max |reference|

# grad_fn names (lower case, without the "backward" suffix) of ops torch-pruning treats as
# element-wise that are not: they move values across the channel dimension
_CHANNEL_MIXING = (
    "roll",
    "flip",
    "rot90",
    "gather",
    "indexselect",
    "index",
    "take",
    "sort",
    "topk",
    "cumsum",
    "cumprod",
    "pixelshuffle",
    "pixelunshuffle",
    "channelshuffle",
    "scatter",
    "fft",
    "cross",
    "argsort",
)
# ops known to keep channels apart (everything else is listed as a suspect in an error)
_CHANNEL_LOCAL = (
    "add",
    "sub",
    "mul",
    "div",
    "relu",
    "hardtanh",
    "hardswish",
    "hardsigmoid",
    "sigmoid",
    "tanh",
    "gelu",
    "silu",
    "elu",
    "leakyrelu",
    "clamp",
    "neg",
    "exp",
    "log",
    "pow",
    "sqrt",
    "rsqrt",
    "abs",
    "mean",
    "sum",
    "maxpool",
    "avgpool",
    "adaptiveavgpool",
    "adaptivemaxpool",
    "clone",
    "transpose",
    "permute",
    "unsqueeze",
    "squeeze",
    "t",
    "mm",
    "bmm",
    "addmm",
    "softmax",
    "logsoftmax",
    "dropout",
    "nativebatchnorm",
    "cudnnbatchnorm",
    "nativelayernorm",
    "convolution",
    "view",
    "reshape",
    "unsafeview",
    "expand",
    "slice",
    "cat",
    "split",
    "splitwithsizes",
    "unbind",
    "constantpadnd",
    "copy",
    "tocopy",
    "alias",
    "maximum",
    "minimum",
    "where",
    "mish",
    "softplus",
    "max",
    "min",
)


@dataclass
class PruneResult:
    model: nn.Module
    plan: dict
    ratio: float  # fraction of prunable channels removed
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    target: str = "macs"
    fraction_asked: float = 1.0
    fraction_reached: float = 1.0  # of the target quantity


def count(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) counted by torch-pruning's op counter."""
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def channels(model: nn.Module, ignored_layers: tuple[str, ...] = ()) -> int:
    """Output channels/features of every conv and linear layer, classifier and ignored excepted."""
    names = _ignored_modules(model, ignored_layers)
    return sum(
        w
        for n, w in layer_widths(model).items()
        if not any(n == i or n.startswith(i + ".") for i in names)
    )


def measure(
    model: nn.Module, example: torch.Tensor, target: str, ignored_layers: tuple[str, ...] = ()
) -> int:
    """The quantity a target is a fraction of: MACs, parameters or prunable channels."""
    if target == "channels":
        return channels(model, ignored_layers)
    macs, params = count(model, example)
    return macs if target == "macs" else params


def _pick(target, macs, params, model, ignored_layers) -> int:
    return {"macs": macs, "params": params}.get(target) or channels(model, ignored_layers)


# --------------------------------------------------------------------------------------------
# one-shot pruning


def prune(
    model: nn.Module,
    example: torch.Tensor,
    fraction: float,
    *,
    target: str = "macs",
    importance: str = "l2",
    round_to: int | None = 8,
    ignored_layers: tuple[str, ...] = (),
    data: tuple[np.ndarray, np.ndarray] | None = None,
    scope: str = "local",
    head_pruning_ratio: float | None = None,
    seed: int = 0,
) -> PruneResult:
    """Prune a copy of `model` to keep at most `fraction` of its MACs, parameters or channels.

    scope "local": per-layer widths fitted to the target (see the module docstring); "global":
    torch-pruning ranks all channels together (`global_pruning=True`, no layer below 10 %), its
    one ratio bisected to the target. head_pruning_ratio: None lets the planner choose how many
    attention heads go, like channels; a number fixes the fraction of heads removed per layer.
    """
    _check_args(fraction, target, importance, scope)
    model = model.eval()
    macs0, params0 = count(model, example)
    budget = fraction * _pick(target, macs0, params0, model, ignored_layers)
    if scope == "global":
        pruned, step = _prune_global(
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
        )
    else:
        pruned, step = _prune_step(
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
        )
    plan = {"history": step["history"], "attributes": step["attributes"]}
    return _reached(
        _result(
            model,
            pruned,
            example,
            plan,
            fraction,
            target,
            importance,
            round_to,
            ignored_layers,
            scope,
            macs0,
            params0,
            [step],
        )
    )


def _reached(res: PruneResult) -> PruneResult:
    """A target missed by more than 10 % is an error, not a silent best effort."""
    if res.fraction_reached > 1.1 * res.fraction_asked:
        raise UsageError(
            f"prune: cannot reach {res.fraction_asked:.0%} of the {res.target} with "
            f"scope={res.plan['scope']}, round_to={res.plan['round_to']} (best "
            f"{res.fraction_reached:.0%}); use "
            + ("prune.scope local, " if res.plan["scope"] == "global" else "")
            + "a smaller prune.round_to, fewer prune.ignored_layers or a larger fraction"
        )
    return res


def prune_to_macs(
    model: nn.Module,
    example: torch.Tensor,
    macs_fraction: float,
    importance: str = "l2",
    round_to: int | None = 8,
    ignored_layers: tuple[str, ...] = (),
    data: tuple[np.ndarray, np.ndarray] | None = None,
    **kwargs,
) -> PruneResult:
    """Keep at most `macs_fraction` of the MACs (kwargs: see `prune`)."""
    return prune(
        model,
        example,
        macs_fraction,
        target="macs",
        importance=importance,
        round_to=round_to,
        ignored_layers=ignored_layers,
        data=data,
        **kwargs,
    )


def prune_with_config(
    model: nn.Module,
    example: torch.Tensor,
    cfg,
    data: tuple[np.ndarray, np.ndarray] | None = None,
    round_to: int | None = None,
) -> PruneResult:
    """One-shot pruning as a recipe's `prune` section says (round_to: the resolved value when
    cfg.round_to is None, i.e. what the target's backends want)."""
    return prune(
        model,
        example,
        cfg.kept_fraction,
        target=cfg.target,
        importance=cfg.importance,
        round_to=cfg.round_to or round_to,
        ignored_layers=tuple(cfg.ignored_layers),
        data=data,
        scope=cfg.scope,
        head_pruning_ratio=cfg.head_pruning_ratio,
    )


def _check_args(fraction, target, importance, scope):
    if not 0 < fraction <= 1:
        raise UsageError(f"prune: the kept fraction must be in (0, 1], got {fraction}")
    if target not in TARGETS:
        raise UsageError(
            f"recipe key prune.target: unknown {target!r}; available: {', '.join(TARGETS)}"
        )
    if importance not in IMPORTANCE_FACTORIES:
        raise UsageError(
            f"recipe key prune.importance: unknown {importance!r}; available: "
            f"{', '.join(IMPORTANCE_FACTORIES)}"
        )
    if scope not in SCOPES:
        raise UsageError(
            f"recipe key prune.scope: unknown {scope!r}; available: {', '.join(SCOPES)}"
        )


def _result(
    dense,
    pruned,
    example,
    plan,
    fraction,
    target,
    importance,
    round_to,
    ignored,
    scope,
    macs0,
    params0,
    steps,
) -> PruneResult:
    macs1, params1 = count(pruned, example)
    before = _pick(target, macs0, params0, dense, ignored)
    after = _pick(target, macs1, params1, pruned, ignored)
    ch0, ch1 = channels(dense, ignored), channels(pruned, ignored)
    ratio = 1 - ch1 / ch0 if ch0 else 0.0
    reached = after / before if before else 1.0
    plan.update(
        ratio=round(ratio, 4),
        importance=importance,
        round_to=round_to,
        scope=scope,
        target=target,
        fraction_asked=fraction,
        fraction_reached=round(reached, 4),
        target_met=bool(after <= fraction * before + 1e-9),
        macs_fraction_asked=fraction if target == "macs" else None,
        macs_before=macs0,
        macs_after=macs1,
        params_before=params0,
        params_after=params1,
        widths={"before": layer_widths(dense), "after": layer_widths(pruned)},
        verified=sorted({g for s in steps for g in s.get("verified", [])}),
        unverified=sorted({g for s in steps for g in s.get("unverified", [])}),
    )
    return PruneResult(
        pruned, plan, ratio, macs0, macs1, params0, params1, target, fraction, reached
    )


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
        if (
            best is None
            or (fits and (best[0] > budget or cost > best[0]))
            or (not fits and best[0] > budget and cost < best[0])
        ):
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
        if (
            best is None
            or (fits and (best[0] > budget or cost > best[0]))
            or (not fits and best[0] > budget and cost < best[0])
        ):
            best = (cost, pruned, record)
        if fits:
            hi = r
        else:
            lo = r
    _, pruned, record = best
    record.update(_verify(model, pruned, example, record["history"]))
    return pruned, record


# --------------------------------------------------------------------------------------------
# the planner: kept width of every group from a counted cost model


@dataclass
class _Group:
    root: str  # module name of the group's root layer
    size: int  # channels, or heads for attention
    choices: list[int]  # allowed kept units, descending, choices[0] == size
    qkv: str | None = None  # attention: the fused qkv linear whose heads go


@dataclass
class _Analysis:
    groups: list[_Group]
    terms: list[tuple[float, tuple[int, ...]]]  # (dense cost, groups whose fractions scale it)
    const: float  # cost no group changes (or the model cannot see)
    ignored: list[str]
    num_heads: dict[str, int] = field(default_factory=dict)  # qkv name -> heads
    head_ratio: float | None = None


def _analyse(model, example, ignored_layers, round_to, target, head_pruning_ratio) -> _Analysis:
    m = copy.deepcopy(model).eval()
    names = {mod: n for n, mod in m.named_modules()}
    ignored = _ignored_modules(m, ignored_layers)
    ignored_mods = _expand(m, ignored)
    attn = _attention_modules(m)
    num_heads = {a.qkv: int(a.num_heads) for a in attn.values()}
    dg = _build_graph(m, example)
    step = round_to or 1
    groups, member, out_of = [], {}, {}
    for group in dg.get_all_groups(ignored_layers=ignored_mods, root_module_types=_ROOT_TYPES):
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
            if head_pruning_ratio is None:  # planned like channels, one head at a time
                choices = list(range(h, 0, -1))
            else:  # fixed by the recipe; MetaPruner removes ceil(ratio * heads)
                k = max(1, h - math.ceil(head_pruning_ratio * h - 1e-9))
                choices = [h, k] if k < h else [h]
            g = _Group(names[root], h, choices, names[qkv[0]])
        elif any(_out_channel_groups(dg, t) > 1 for t in targets):
            g = _Group(names[root], size, [size])  # grouped conv/norm: left as it is
        else:
            g = _Group(names[root], size, [size] + list(range((size - 1) // step * step, 0, -step)))
        gi = len(groups)
        groups.append(g)
        for dep, _ in group:
            t = dep.target.module
            if isinstance(t, nn.Module):
                member.setdefault(t, set()).add(gi)
                if dg.is_out_channel_pruning_fn(dep.handler):
                    out_of.setdefault(t, gi)
    # cost terms: dense cost of each layer x the keep-fractions of the groups that shape it
    terms, covered = [], 0.0
    if target == "channels":
        skip = set(ignored_mods)
        for mod in names:
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod not in skip:
                w = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
                terms.append((float(w), (out_of[mod],) if mod in out_of else ()))
                covered += w
        total = covered
    else:
        macs, params, layer_macs, layer_params = tp.utils.count_ops_and_params(
            m, example, layer_wise=True
        )
        per = layer_macs if target == "macs" else layer_params
        total = float(macs if target == "macs" else params)
        for mod in m.modules():
            if next(mod.children(), None) is not None or not per.get(mod):
                continue
            terms.append((float(per[mod]), tuple(sorted(member.get(mod, ())))))
            covered += per[mod]
    return _Analysis(
        groups,
        terms,
        total - covered,
        ignored,
        {names[q]: h for q, h in num_heads.items()},
        head_pruning_ratio,
    )


def _plan_widths(ana: _Analysis, budget: float) -> dict[int, int]:
    """Kept units per group: step down the group that stays widest, then give steps back."""
    idx = {gi: 0 for gi in range(len(ana.groups))}
    groups = ana.groups

    def kept(gi):
        return groups[gi].choices[idx[gi]]

    def cost():
        frac = [kept(gi) / g.size for gi, g in enumerate(groups)]
        return ana.const + sum(w * math.prod(frac[g] for g in gs) for w, gs in ana.terms)

    # a recipe-fixed head count is not planned: take it at once
    for gi, g in enumerate(groups):
        if g.qkv is not None and ana.head_ratio is not None:
            idx[gi] = len(g.choices) - 1
    while cost() > budget:
        cand = [
            gi
            for gi, g in enumerate(groups)
            if idx[gi] + 1 < len(g.choices)
            and not (g.qkv is not None and ana.head_ratio is not None)
        ]
        if not cand:
            break
        gi = max(
            cand, key=lambda i: (groups[i].choices[idx[i] + 1] / groups[i].size, groups[i].size)
        )
        idx[gi] += 1
    changed = True
    while changed:  # give back steps while the budget allows, narrowest groups first
        changed = False
        for gi in sorted(idx, key=lambda i: kept(i) / groups[i].size):
            if idx[gi] == 0 or (groups[gi].qkv is not None and ana.head_ratio is not None):
                continue
            idx[gi] -= 1
            if cost() <= budget:
                changed = True
            else:
                idx[gi] += 1
    return {gi: kept(gi) for gi in idx}


# --------------------------------------------------------------------------------------------
# pruning a copy with torch-pruning


def _prune_copy(
    model,
    example,
    ana: _Analysis,
    kept: dict[int, int] | None,
    importance,
    round_to,
    data,
    seed,
    global_ratio: float | None = None,
):
    """Prune a deep copy: per-group widths (`kept`) or one global ratio. Returns the copy and
    the step record {history, attributes}."""
    m = copy.deepcopy(model).eval()
    modules = dict(m.named_modules())
    attn = _attention_modules(m)
    num_heads = {a.qkv: int(a.num_heads) for a in attn.values()}
    kw = {}
    if num_heads:
        kw = {"num_heads": num_heads, "prune_num_heads": True, "prune_head_dims": False}
    if kept is not None:
        ratios, head_ratios = {}, {}
        for gi, k in kept.items():
            g = ana.groups[gi]
            if k >= g.size:
                continue
            if g.qkv is not None:  # MetaPruner removes ceil(ratio * heads) heads
                head_ratios[modules[g.qkv]] = (g.size - k - 0.5) / g.size
                # it removes heads only in a scope that prunes some width; with
                # prune_head_dims=False that width ratio then removes nothing itself
                ratios[modules[g.qkv]] = 0.5
            else:  # int(size * (1 - ratio)) == k exactly, already a multiple of round_to
                ratios[modules[g.root]] = 1 - (k + 0.5) / g.size
        kw.update(pruning_ratio=0.0, pruning_ratio_dict=ratios)
        if num_heads:
            kw.update(head_pruning_ratio=0.0, head_pruning_ratio_dict=head_ratios)
    else:
        kw.update(pruning_ratio=global_ratio, global_pruning=True, max_pruning_ratio=0.9)
        if num_heads:
            hr = ana.head_ratio if ana.head_ratio is not None else global_ratio
            kw.update(head_pruning_ratio=hr)
    imp = IMPORTANCE_FACTORIES[importance]()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Uu]nwrapped parameters.*")
        try:
            pruner = tp.pruner.MetaPruner(
                m,
                example,
                importance=imp,
                ignored_layers=_expand(m, ana.ignored),
                round_to=round_to,
                **kw,
            )
        except Exception as e:  # tracing failed: nothing was pruned
            raise UsageError(
                f"prune: torch-pruning cannot trace the model ({_short(e)}); "
                f"list the layers it cannot follow in prune.ignored_layers "
                f"in the recipe"
            ) from e
        _prepare_importance(importance, imp, m, data)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for group in pruner.step(interactive=True):
                root = pruner.DG._module2name.get(group[0][0].target.module, "?")
                try:
                    group.prune()
                except Exception as e:
                    raise UsageError(
                        f"prune: torch-pruning fails to remove channels of layer {root!r} "
                        f"({_short(e)}); add {root!r} to prune.ignored_layers in the recipe"
                    ) from e
    for a in attn.values():  # heads removed: fix the module's head count and size
        a.num_heads = int(pruner.num_heads[a.qkv])
        a.head_dim = a.qkv.out_features // (3 * a.num_heads)
    m.zero_grad(set_to_none=True)
    history = [
        [name, bool(is_out), [int(getattr(i, "idx", i)) for i in idxs]]
        for name, is_out, idxs in pruner.DG.pruning_history()
    ]
    _check_runs(model, m, example, history)
    return m.eval(), {"history": history, "attributes": _pruned_attributes(m)}


def _prepare_importance(name, imp, model, data):
    """Gradient-based criteria read .grad (Taylor) or accumulated per-sample grads (Hessian)."""
    if name not in ("taylor", "hessian"):
        return
    if data is None:
        raise UsageError(f"prune.importance {name} needs training data for gradients")
    x, y = (torch.from_numpy(a[:128]) for a in data)
    model.eval()
    model.zero_grad()
    if name == "taylor":
        F.cross_entropy(model(x), y).backward()
        return
    imp.zero_grad()
    for i in range(min(len(x), 32)):  # OBD needs per-sample squared gradients
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        imp.accumulate_grad(model)


# --------------------------------------------------------------------------------------------
# checks: the pruned copy runs, and computes what the dense model computes on the kept channels


def _check_runs(dense, pruned, example, history):
    """The pruned copy runs and keeps the output shape; if not, name the layer and the group."""
    with torch.no_grad():
        want = dense(example)
    where, err, out = _forward_locating(pruned, example)
    if err is None and out.shape == want.shape:
        return
    culprit = _first_failing_entry(
        dense, example, history, lambda m: _forward_locating(m, example)[1] is not None
    )
    root = culprit[0] if culprit else "?"
    what = (
        _short(err)
        if err is not None
        else f"output shape {tuple(out.shape)} instead of {tuple(want.shape)}"
    )
    layer = (
        f"layer {where!r} ({type(dict(pruned.named_modules())[where]).__name__})"
        if where is not None
        else "the model"
    )
    raise UsageError(
        f"prune: after removing channels of {root!r}, {layer} fails: {what}. torch-pruning "
        f"cannot follow the channels through it; add {root!r} to prune.ignored_layers in the "
        f"recipe"
    )


def _verify(dense, pruned, example, history) -> dict:
    """Exactness on every group whose layers are channel-local; a static scan for channel-
    mixing ops on the others (layer norm, grouped conv: the zeroed channels would still count).
    Returns {"verified": [roots], "unverified": [roots]}; raises UsageError on a failure."""
    if not history:
        return {"verified": [], "unverified": []}
    checkable, unverifiable = [], []
    masked = copy.deepcopy(dense).eval()
    owners, dg = _graph_with_owners(masked, example)
    for entry in history:
        (checkable if _zero_entry(dg, entry, dry_run=True) else unverifiable).append(entry)
    for entry in checkable:
        _zero_entry(dg, entry)
    if checkable:
        ref = apply_plan(
            copy.deepcopy(dense).eval(), {"history": checkable}, example, attributes=False
        )
        _fix_heads(ref)
        if not _same(masked, ref, example):
            bad = _first_failing_entry(dense, example, checkable, None, exact=True) or checkable[0]
            suspects = _suspects(
                *_graph_with_owners(copy.deepcopy(dense).eval(), example), bad, mixing_only=False
            )
            hint = (
                f"; ops it treats as element-wise there: {', '.join(suspects)}"
                if suspects
                else "; e.g. a reshape/transpose that mixes channels (channel shuffle) or a "
                "module that uses its own weight in forward"
            )
            raise UsageError(
                f"prune: removing channels of {bad[0]!r} changes what the kept channels compute: "
                f"torch-pruning does not follow an op between that layer and its consumers"
                f"{hint}. Add {bad[0]!r} to prune.ignored_layers in the recipe"
            )
    for entry in unverifiable:
        suspects = _suspects(owners, dg, entry, mixing_only=True)
        if suspects:
            raise UsageError(
                f"prune: removing channels of {entry[0]!r} goes through {', '.join(suspects)}, which "
                f"torch-pruning treats as element-wise; add {entry[0]!r} to "
                f"prune.ignored_layers in the recipe"
            )
    return {"verified": [e[0] for e in checkable], "unverified": [e[0] for e in unverifiable]}


def _same(a, b, example) -> bool:
    x = torch.randn(example.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ya, yb = a(x), b(x)
    scale = float(ya.abs().max()) or 1.0
    return ya.shape == yb.shape and float((ya - yb).abs().max()) <= _REL_TOL * scale


def _first_failing_entry(dense, example, entries, fails, exact=False):
    """Replay history entries one at a time on fresh copies; the first that breaks."""
    for entry in entries:
        m = copy.deepcopy(dense).eval()
        try:
            apply_plan(m, {"history": [entry]}, example, attributes=False)
        except Exception:  # noqa: BLE001  (any failure here is the finding)
            return entry
        _fix_heads(m)
        if exact:
            masked = copy.deepcopy(dense).eval()
            dg = _build_graph(masked, example)
            _zero_entry(dg, entry)
            try:
                if not _same(masked, m, example):
                    return entry
            except Exception:  # noqa: BLE001  (any failure here is the finding)
                return entry
        elif fails(m):
            return entry
    return None


def _fix_heads(m):
    """Head count from the pruned qkv width (heads are removed whole; head_dim is kept)."""
    for a in _attention_modules(m).values():
        a.num_heads = a.qkv.out_features // (3 * a.head_dim)


def _zero_entry(dg, entry, dry_run=False) -> bool:
    """Zero, in the dense model, the channels a history entry removes, where they are produced
    and where they are consumed. Returns False if a layer of the group is not channel-local
    (norms over channels, grouped conv, unknown modules): such a group cannot be checked so."""
    name, is_out, idxs = entry
    module = dict(dg.model.named_modules())[name]
    pruner = dg.get_pruner_of_module(module)
    fn = pruner.prune_out_channels if is_out else pruner.prune_in_channels
    group = dg.get_pruning_group(module, fn, idxs)
    ok = True
    with torch.no_grad():
        for dep, ix in group:
            t = dep.target.module
            ix = [int(getattr(i, "idx", i)) for i in ix]
            out = dg.is_out_channel_pruning_fn(dep.handler)
            if isinstance(t, _GRAPH_OPS):
                continue  # the graph's own op nodes (element-wise, reshape, concat...): no weights
            if isinstance(t, nn.Parameter):
                if not dry_run:
                    t.data.index_fill_(dep.target.pruning_dim, torch.tensor(ix), 0.0)
            elif isinstance(t, nn.modules.conv._ConvNd):
                dw = t.groups == t.in_channels == t.out_channels
                if t.groups > 1 and not dw:
                    ok = False
                elif not dry_run:
                    w = t.weight
                    if t.transposed:
                        if out:
                            w[:, ix] = 0
                        else:
                            w[ix] = 0
                    elif out or dw:
                        w[ix] = 0
                    else:
                        w[:, ix] = 0
                    if t.bias is not None and (out or dw):
                        t.bias[ix] = 0
            elif isinstance(t, nn.Linear):
                if not dry_run:
                    if out:
                        t.weight[ix] = 0
                        if t.bias is not None:
                            t.bias[ix] = 0
                    else:
                        t.weight[:, ix] = 0
            elif isinstance(t, nn.modules.batchnorm._BatchNorm):
                if not t.affine:
                    ok = False
                elif not dry_run:
                    t.weight[ix] = 0
                    t.bias[ix] = 0
            elif isinstance(t, (nn.PReLU,)):
                pass  # PReLU(0) == 0
            elif isinstance(t, nn.Module):
                ok = False  # layer/group norm, attention, LSTM, embedding, ...: not channel-local
    return ok


def _suspects(owners, dg, entry, mixing_only: bool) -> list[str]:
    """Ops in the entry's group that torch-pruning treats as element-wise, with their layer."""
    module = dict(dg.model.named_modules())[entry[0]]
    pruner = dg.get_pruner_of_module(module)
    fn = pruner.prune_out_channels if entry[1] else pruner.prune_in_channels
    group = dg.get_pruning_group(module, fn, entry[2])
    found = []
    for dep, _ in group:
        node = dep.target
        if not isinstance(node.module, tp.ops._ElementWiseOp):
            continue
        gf = node.grad_fn
        op = type(gf).__name__
        custom = isinstance(gf, torch.autograd.function.BackwardCFunction)
        base = re.sub(r"backward\d*$", "", op.lower())
        if custom:
            what = f"custom autograd Function {op.removesuffix('Backward')}"
        elif base in _CHANNEL_MIXING or (not mixing_only and base not in _CHANNEL_LOCAL):
            what = f"torch.{base}" if base in _CHANNEL_MIXING else op
        else:
            continue
        layer = owners.get(gf, "")
        item = f"{what} in layer {layer!r}" if layer else f"{what} in the model's forward"
        if item not in found:
            found.append(item)
    return found


def _graph_with_owners(m, example):
    """Build the dependency graph while recording which module's forward made each grad_fn."""
    owners: dict = {}

    def claim(name):
        def hook(mod, inp, out):
            stack = [t.grad_fn for t in _tensors(out) if t.grad_fn is not None]
            while stack:
                gf = stack.pop()
                if gf in owners:
                    continue
                owners[gf] = name
                stack.extend(
                    f
                    for f, _ in getattr(gf, "next_functions", ())
                    if f is not None and "AccumulateGrad" not in type(f).__name__
                )

        return hook

    handles = [mod.register_forward_hook(claim(n)) for n, mod in m.named_modules()]
    try:
        dg = _build_graph(m, example)
    finally:
        for h in handles:
            h.remove()
    return owners, dg


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def _forward_locating(model, x):
    """Run forward; on an exception, the innermost module that was running. -> (name, err, out)"""
    stack: list[str] = []
    handles = []

    def enter(name):
        def hook(*_):
            stack.append(name)  # returns None: the input is left as it is

        return hook

    def leave(*_):
        stack.pop()  # returns None: the output is left as it is

    for n, mod in model.named_modules():
        handles.append(mod.register_forward_pre_hook(enter(n)))
        handles.append(mod.register_forward_hook(leave))
    try:
        with torch.no_grad():
            out = model(x)
        return None, None, out
    except Exception as e:  # noqa: BLE001  (reported with the layer it happened in)
        return (stack[-1] if stack else None), e, None
    finally:
        for h in handles:
            h.remove()


def _short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:240]


# --------------------------------------------------------------------------------------------
# iterative pruning, rewinding, unstructured pruning


def cubic_schedule(final_fraction: float, steps: int, initial_fraction: float = 1.0) -> list[float]:
    """Kept fraction after each of `steps` prunings, Zhu & Gupta 2017: sparsity
    s_t = s_f + (s_i - s_f)(1 - t/n)^3, t = 1..n; fast at first, gentle at the end."""
    s_i, s_f = 1 - initial_fraction, 1 - final_fraction
    return [1 - (s_f + (s_i - s_f) * (1 - t / steps) ** 3) for t in range(1, steps + 1)]


def prune_iteratively(
    model: nn.Module,
    example: torch.Tensor,
    cfg,
    data: tuple[np.ndarray, np.ndarray] | None,
    finetune: Callable[[nn.Module, int], None],
    steps: int,
    round_to: int | None = None,
) -> PruneResult:
    """Prune -> fine-tune `steps` times along the cubic schedule to `cfg`'s target.

    finetune(model, step) trains the pruned model in place (step = 1..steps; the pipeline
    passes a KD fine-tune). The plan records one history per step; `apply_plan` replays them in
    order, each on a freshly traced graph (head counts and slices change between steps).
    """
    if steps < 1:
        raise UsageError(f"recipe key prune.iterative_steps must be >= 1, got {steps}")
    fraction, target, scope = cfg.kept_fraction, cfg.target, cfg.scope
    _check_args(fraction, target, cfg.importance, scope)
    round_to = cfg.round_to or round_to
    ignored = tuple(cfg.ignored_layers)
    dense = model.eval()
    macs0, params0 = count(dense, example)
    total = measure(dense, example, target, ignored)
    current, records = dense, []
    for t, keep in enumerate(cubic_schedule(fraction, steps), start=1):
        fn = _prune_global if scope == "global" else _prune_step
        # a recipe-fixed head ratio is a fraction of the dense heads: all of it at step 1
        heads = cfg.head_pruning_ratio if t == 1 or cfg.head_pruning_ratio is None else 0.0
        current, record = fn(
            current,
            example,
            keep * total,
            target,
            cfg.importance,
            round_to,
            ignored,
            data,
            heads,
            t,
        )
        record["kept_fraction_goal"] = round(keep, 4)
        records.append(record)
        finetune(current, t)
        current.eval()
    plan = {
        "steps": [
            {
                "history": r["history"],
                "attributes": r["attributes"],
                "kept_fraction_goal": r["kept_fraction_goal"],
            }
            for r in records
        ],
        "attributes": records[-1]["attributes"],
        "schedule": "cubic (Zhu & Gupta 2017)",
    }
    return _reached(
        _result(
            dense,
            current,
            example,
            plan,
            fraction,
            target,
            cfg.importance,
            round_to,
            ignored,
            scope,
            macs0,
            params0,
            records,
        )
    )


def rewind(pruned_model: nn.Module, plan: dict, initial_state_dict: dict, spec: dict) -> nn.Module:
    """Lottery-ticket rewinding (Frankle & Carbin 2019): the pruned structure, its surviving
    weights reset to their values at initialisation (or at an early rewind checkpoint).

    A fresh zoo model gets `initial_state_dict` (dense shapes), then the plan is replayed: its
    channel indices select the same survivors the pruned model kept.
    """
    model = create_from_spec(spec)
    try:
        model.load_state_dict(initial_state_dict)
    except RuntimeError as e:
        raise UsageError(
            f"rewind: the initial weights do not fit model {spec['name']!r} ({_short(e)})"
        ) from None
    apply_plan(model, plan, example_input(spec))
    want = {k: tuple(v.shape) for k, v in pruned_model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if want != got:
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        raise UsageError(
            f"rewind: the plan does not rebuild the pruned model's shapes "
            f"(differs at {', '.join(diff[:3])})"
        )
    return model.eval()


def prune_unstructured(
    model: nn.Module, sparsity: float, *, remove: bool = True, include_classifier: bool = True
) -> tuple[nn.Module, dict]:
    """Global magnitude pruning of individual weights (conv and linear weights, not biases).

    Works on a copy. With remove=True the masks are folded in (torch.nn.utils.prune.remove):
    the zeros are real zeros in a plain module that exports; fine-tuning would regrow them, so
    fine-tune with remove=False (masks kept as forward pre-hooks) and call `remove_masks` after.
    The counted sparsity is over the pruned weights; on dense kernels (XNNPACK fp32) it buys no
    speed, only compressibility.
    """
    import torch.nn.utils.prune as tprune

    if not 0 <= sparsity < 1:
        raise UsageError(f"prune: unstructured sparsity must be in [0, 1), got {sparsity}")
    m = copy.deepcopy(model).eval()
    layers = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    if not include_classifier:
        layers = layers[:-1] if isinstance(layers[-1][1], nn.Linear) else layers
    if sparsity > 0:
        tprune.global_unstructured(
            [(mod, "weight") for _, mod in layers],
            pruning_method=tprune.L1Unstructured,
            amount=float(sparsity),
        )
        if remove:
            remove_masks(m)
    info = _sparsity_info(m, layers, sparsity)
    return m, info


def remove_masks(model: nn.Module) -> nn.Module:
    """Fold torch.nn.utils.prune masks into the weights, leaving plain modules."""
    import torch.nn.utils.prune as tprune

    for mod in model.modules():
        for name in [
            h._tensor_name
            for h in mod._forward_pre_hooks.values()
            if isinstance(h, tprune.BasePruningMethod)
        ]:
            tprune.remove(mod, name)
    return model


def masks_of_zeros(model: nn.Module) -> dict[str, torch.Tensor]:
    """{module name: weight != 0} for conv/linear layers that hold zeros (unstructured pruning)."""
    return {
        n: (m.weight != 0)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and bool((m.weight == 0).any())
    }


def apply_masks(
    model: nn.Module, masks: dict[str, torch.Tensor], *, hold: bool = False
) -> nn.Module:
    """Zero the masked weights in place; hold=True keeps each mask as a forward pre-hook
    (torch.nn.utils.prune.custom_from_mask) so fine-tuning cannot regrow them: call
    `remove_masks` after training."""
    import torch.nn.utils.prune as tprune

    modules = dict(model.named_modules())
    for name, mask in masks.items():
        if hold:
            tprune.custom_from_mask(modules[name], "weight", mask)
        else:
            with torch.no_grad():
                modules[name].weight.mul_(mask)
    return model


def _sparsity_info(m, layers, asked) -> dict:
    per, zeros, total = {}, 0, 0
    for n, mod in layers:
        w = mod.weight.detach()
        z = int((w == 0).sum())
        per[n] = round(z / w.numel(), 4)
        zeros += z
        total += w.numel()
    return {
        "asked": asked,
        "sparsity": zeros / total if total else 0.0,
        "zeros": zeros,
        "weights": total,
        "per_layer": per,
        "method": "global magnitude (L1), torch.nn.utils.prune",
    }


# --------------------------------------------------------------------------------------------
# plans, names, helpers


def _build_graph(model, example):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Uu]nwrapped parameters.*")
        return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def _out_channel_groups(dg, module) -> int:
    if isinstance(module, tp.ops.TORCH_CONV) and module.groups == module.out_channels:
        return 1
    p = dg.get_pruner_of_module(module)
    try:
        return int(p.get_out_channel_groups(module) or 1)
    except Exception:  # noqa: BLE001  (a pruner without channel groups)
        return 1


def _attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules with one fused `qkv` Linear and an int `num_heads` (timm-style attention)."""
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(getattr(m, "qkv", None), nn.Linear)
        and isinstance(getattr(m, "num_heads", None), int)
    }


def _expand(model, names) -> list[nn.Module]:
    modules = dict(model.named_modules())
    return [sub for n in names for sub in modules[n].modules()]


def _ignored_modules(model: nn.Module, names: tuple[str, ...]) -> list[str]:
    """The classifier (last Linear) plus the recipe's ignored_layers, by module name."""
    modules = dict(model.named_modules())
    for n in names:
        if n not in modules:
            raise UsageError(
                f"recipe key prune.ignored_layers: no module named {n!r} in the "
                f"model; e.g. {', '.join(list(modules)[1:6])}"
            )
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    return list(dict.fromkeys(list(names) + linears[-1:]))


def _pruned_attributes(model: nn.Module) -> dict:
    """Attributes pruning changes besides tensor shapes (attention head count and size)."""
    out = {}
    for name, m in model.named_modules():
        if hasattr(m, "num_heads") and hasattr(m, "head_dim"):
            out[name] = {"num_heads": int(m.num_heads), "head_dim": int(m.head_dim)}
    return out


def apply_plan(
    model: nn.Module, plan: dict, example: torch.Tensor, attributes: bool = True
) -> nn.Module:
    """Replay a saved plan on a fresh model of the same architecture (in place; returned).

    A plan holds one pruning history (one-shot) or `steps`, one history per iterative step;
    each step is replayed on a freshly traced dependency graph, then its attributes are set.
    """
    steps = plan.get("steps") or [
        {"history": plan.get("history", []), "attributes": plan.get("attributes", {})}
    ]
    modules = dict(model.named_modules())
    for step in steps:
        if step["history"]:
            dg = _build_graph(model.eval(), example)
            dg.load_pruning_history([tuple(h) for h in step["history"]])
        if attributes:
            for name, attrs in step.get("attributes", {}).items():
                for k, v in attrs.items():
                    setattr(modules[name], k, v)
    if attributes:
        for name, attrs in plan.get("attributes", {}).items():
            for k, v in attrs.items():
                setattr(modules[name], k, v)
    return model


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels/features of every conv and linear layer, for before/after tables."""
    return {
        n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }
