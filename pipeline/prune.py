"""Structured channel pruning on torch-pruning's dependency graph, to a MAC target.

Removing whole channels is what becomes speed on a phone: every pruned group shrinks the
dense conv/linear kernels XNNPACK runs. The result is recorded as a plan (torch-pruning's
pruning history) so the pruned model can be rebuilt from the zoo factory without pickle.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from pipeline.errors import UsageError

IMPORTANCE_FACTORIES = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),  # first order (Molchanov et al.)
    "hessian": lambda: tp.importance.GroupHessianImportance(),  # OBD (LeCun et al. 1990)
    "random": lambda: tp.importance.RandomImportance(),  # a control, not a method
}


@dataclass
class PruneResult:
    model: nn.Module
    plan: dict
    ratio: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int


def count(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) counted by torch-pruning's op counter."""
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def prune_to_macs(
    model: nn.Module,
    example: torch.Tensor,
    macs_fraction: float,
    importance: str = "l2",
    round_to: int | None = 8,
    ignored_layers: tuple[str, ...] = (),
    data: tuple[np.ndarray, np.ndarray] | None = None,
) -> PruneResult:
    """Find the smallest uniform per-layer channel ratio whose MACs fit the target, prune."""
    model = model.eval()
    macs0, params0 = count(model, example)
    target = macs_fraction * macs0
    ignored = _ignored_modules(model, ignored_layers)
    def attempt(ratio):
        return _prune_copy(model, example, ratio, importance, round_to, ignored, data), ratio

    best = attempt(0.0) if macs_fraction >= 1.0 else None
    lo, hi = 0.0, 0.95
    while best is None or hi - lo > 0.005:  # bisection; each try prunes a copy (< 0.1 s)
        if best is None and hi - lo <= 0.005:  # even 0.95 misses: take it, the plan says so
            best = attempt(0.95)
            break
        trial = attempt((lo + hi) / 2)
        if count(trial[0][0], example)[0] <= target:
            best, hi = trial, trial[1]
        else:
            lo = trial[1]
    (pruned, plan), ratio = best
    macs1, params1 = count(pruned, example)
    plan.update(ratio=round(ratio, 4), importance=importance, round_to=round_to,
                macs_fraction_asked=macs_fraction, macs_before=macs0, macs_after=macs1)
    return PruneResult(pruned, plan, ratio, macs0, macs1, params0, params1)


def _prune_copy(model, example, ratio, importance, round_to, ignored, data):
    m = copy.deepcopy(model)
    ignored_m = [dict(m.named_modules())[n] for n in ignored]
    imp = IMPORTANCE_FACTORIES[importance]()
    pruner = tp.pruner.MetaPruner(
        m, example, importance=imp, pruning_ratio=ratio, ignored_layers=ignored_m,
        round_to=round_to,
    )
    _prepare_importance(importance, imp, m, data)
    pruner.step()
    history = [[name, bool(is_out), [int(getattr(i, "idx", i)) for i in idxs]]
               for name, is_out, idxs in pruner.DG.pruning_history()]
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


def _ignored_modules(model: nn.Module, names: tuple[str, ...]) -> list[str]:
    """The classifier (last Linear) plus the recipe's ignored_layers, by module name."""
    modules = dict(model.named_modules())
    for n in names:
        if n not in modules:
            raise UsageError(f"recipe key prune.ignored_layers: no module named {n!r} in the "
                             f"model; e.g. {', '.join(list(modules)[1:6])}")
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    return list(dict.fromkeys(list(names) + linears[-1:]))


def _pruned_attributes(model: nn.Module) -> dict:
    """Attributes pruning changes besides tensor shapes (attention head count and size)."""
    out = {}
    for name, m in model.named_modules():
        if hasattr(m, "num_heads") and hasattr(m, "head_dim"):
            out[name] = {"num_heads": int(m.num_heads), "head_dim": int(m.head_dim)}
    return out


def apply_plan(model: nn.Module, plan: dict, example: torch.Tensor) -> nn.Module:
    """Replay a saved plan on a fresh model of the same architecture."""
    dg = tp.DependencyGraph().build_dependency(model.eval(), example_inputs=example)
    dg.load_pruning_history([tuple(h) for h in plan["history"]])
    modules = dict(model.named_modules())
    for name, attrs in plan.get("attributes", {}).items():
        for k, v in attrs.items():
            setattr(modules[name], k, v)
    return model


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels/features of every conv and linear layer, for before/after tables."""
    return {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
