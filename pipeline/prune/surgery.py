"""Pruning a copy with torch-pruning's MetaPruner: the planned widths (or one global ratio) as
its per-layer ratios, the importance criterion that picks which channels go, the history."""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
import torch_pruning as tp

from ground.errors import UsageError
from pipeline.prune.blocks import remove_blocks
from pipeline.prune.checks import _check_runs
from pipeline.prune.graph import (
    GroupFailure,
    _attention_modules,
    _drop_traced_caches,
    _expand,
    _release_trace,
    _short,
)
from pipeline.prune.plan import _pruned_attributes
from pipeline.prune.widths import _Analysis, _removed_layers

IMPORTANCE_FACTORIES = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),  # first order (Molchanov et al.)
    "hessian": lambda: tp.importance.GroupHessianImportance(),  # OBD (LeCun et al. 1990)
    "random": lambda: tp.importance.RandomImportance(),  # a control, not a method
}


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
    """Prune a deep copy: per-group widths (`kept`; a block group at 0 is removed whole) or
    one global ratio. Returns the copy and the step record {history, attributes,
    removed_blocks}."""
    m = copy.deepcopy(model).eval()
    attn = _attention_modules(m)
    num_heads = {a.qkv: int(a.num_heads) for a in attn.values()}
    kw = _ratios(m, ana, kept, global_ratio, num_heads)
    pruner = _run_pruner(m, example, ana, importance, round_to, data, seed, kw, kept)
    for a in attn.values():  # heads removed: fix the module's head count and size
        a.num_heads = int(pruner.num_heads[a.qkv])
        a.head_dim = a.qkv.out_features // (3 * a.num_heads)
    m.zero_grad(set_to_none=True)
    history = [
        [name, bool(is_out), [int(getattr(i, "idx", i)) for i in idxs]]
        for name, is_out, idxs in pruner.DG.pruning_history()
    ]
    _release_trace(pruner.DG)
    removed = [g.root for gi, g in enumerate(ana.groups) if g.block and (kept or {}).get(gi) == 0]
    remove_blocks(m, removed)
    _check_runs(model, m, example, history)
    record = {"history": history, "attributes": _pruned_attributes(m), "removed_blocks": removed}
    return m.eval(), record


def _ratios(m, ana: _Analysis, kept, global_ratio, num_heads) -> dict:
    """MetaPruner's keyword arguments for the planned widths, or for one global ratio."""
    kw = {}
    if num_heads:
        kw = {"num_heads": num_heads, "prune_num_heads": True, "prune_head_dims": False}
    if kept is None:
        kw.update(pruning_ratio=global_ratio, global_pruning=True, max_pruning_ratio=0.9)
        if num_heads:
            hr = ana.head_ratio if ana.head_ratio is not None else global_ratio
            kw.update(head_pruning_ratio=hr)
        return kw
    modules = dict(m.named_modules())
    ratios, head_ratios = {}, {}
    for gi, k in kept.items():
        g = ana.groups[gi]
        if k >= g.size or g.block:  # a block goes after the channels (_prune_copy)
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
    return kw


def _run_pruner(m, example, ana: _Analysis, importance, round_to, data, seed, kw, kept):
    """Prune `m` in place, group by group; a group torch-pruning cannot trace or remove is
    named in the error. Returns the pruner (its graph holds the history)."""
    imp = IMPORTANCE_FACTORIES[importance]()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Uu]nwrapped parameters.*")
        try:
            pruner = tp.pruner.MetaPruner(
                m,
                example,
                importance=imp,
                ignored_layers=_expand(m, ana.ignored),
                # planned widths are exact multiples already; torch-pruning's own rounding
                # would undo them on grouped convs (it rounds the per-group count)
                round_to=round_to if kept is None else None,
                **kw,
            )
        except Exception as e:  # tracing failed: nothing was pruned
            raise UsageError(
                f"prune: torch-pruning cannot trace the model ({_short(e)}); "
                f"list the layers it cannot follow in prune.ignored_layers "
                f"in the recipe"
            ) from e
        _drop_traced_caches(m)
        _prepare_importance(importance, imp, m, data)
        _prune_groups(pruner, {mod: n for n, mod in m.named_modules()}, seed)
    return pruner


def _prune_groups(pruner, names: dict, seed: int) -> None:
    """Let the pruner remove its groups one by one. Whatever torch-pruning raises, while it
    ranks a group's channels or removes them, becomes a GroupFailure: with the group's root
    layer when it is known, else None (the caller then locates it)."""
    root, ranked = None, _ranking_recorded(pruner, names)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            for group in pruner.step(interactive=True):
                ranked.clear()  # ranking is over: a failure from here on is the group's
                root = names.get(group[0][0].target.module)
                group.prune()
                root = None
        except Exception as e:  # anything the engine raises is this group's
            root = root or (ranked[-1] if ranked else None)
            layer = repr(root) if root else "its root layer"
            raise GroupFailure(
                f"prune: torch-pruning fails to remove channels of "
                f"{'layer ' + layer if root else 'a group'} ({_short(e)}); add {layer} to "
                "prune.ignored_layers in the recipe",
                root,
                f"torch-pruning fails on it ({_short(e)})",
            ) from e


def _ranking_recorded(pruner, names: dict) -> list[str]:
    """The groups the pruner ranks (a layer each removes channels of), in order, as it ranks
    them. step() ranks every group before it yields the first; a failure then (e.g. importance
    scores that do not split into the channel groups it assumed) belongs to the group ranked
    last."""
    ranked, estimate = [], pruner.estimate_importance

    def recording(group):  # attention groups come re-rooted at a layer they narrow the input of
        removed = _removed_layers(pruner.DG, names, group)
        ranked.append(removed[0] if removed else names.get(group[0][0].target.module))
        return estimate(group)

    pruner.estimate_importance = recording
    return ranked


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
