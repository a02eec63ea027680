"""One-shot structured pruning to a MAC/parameter/channel target: the public entry points,
their argument checks, and the result with its plan and before/after counts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ground.errors import UsageError
from ground.log import log
from pipeline.config import PRUNE_SCOPES, PRUNE_TARGETS
from pipeline.prune.budget import _prune_global, _prune_step
from pipeline.prune.counting import _pick, channels, count, layer_widths
from pipeline.prune.latency import planner_terms
from pipeline.prune.plan import step_plan
from pipeline.prune.surgery import IMPORTANCE_FACTORIES

TARGETS, SCOPES = PRUNE_TARGETS, PRUNE_SCOPES


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
    min_width: float = 0.25,
) -> PruneResult:
    """Prune a copy of `model` to keep at most `fraction` of its MACs, parameters or channels.

    scope "local": per-layer widths fitted to the target (see the module docstring); "global":
    torch-pruning ranks all channels together (`global_pruning=True`, no layer below 10 %), its
    one ratio bisected to the target. head_pruning_ratio: None lets the planner choose how many
    attention heads go, like channels; a number fixes the fraction of heads removed per layer.
    min_width: no group is planned below this fraction of its width (scope local).
    """
    _check_args(fraction, target, importance, scope)
    model = model.eval()
    macs0, params0 = count(model, example)
    budget = fraction * _pick(target, macs0, params0, model, example, ignored_layers)
    search = _prune_global if scope == "global" else _prune_step
    pruned, step = search(
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
        min_width,
    )
    plan = step_plan(step)
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
            f"{res.fraction_reached:.0%}{_held_back(res.plan)}); use "
            + ("prune.scope local, " if res.plan["scope"] == "global" else "")
            + "a smaller prune.round_to or prune.min_width, fewer prune.ignored_layers or a "
            "larger fraction"
        )
    return res


def _held_back(plan: dict) -> str:
    frozen, floored = len(plan.get("frozen", {})), len(plan.get("floored", []))
    if not (frozen or floored):
        return ""
    return f"; {frozen} layer(s) must keep their width and {floored} group(s) are at their floor"


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
        min_width=cfg.min_width,
    )


def _check_args(fraction, target, importance, scope):
    if not 0 < fraction <= 1:
        raise UsageError(f"prune: the kept fraction must be in (0, 1], got {fraction}")
    if isinstance(target, str) and target not in TARGETS:
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
    before = _pick(target, macs0, params0, dense, example, ignored)
    after = _pick(target, macs1, params1, pruned, example, ignored)
    ch0, ch1 = channels(dense, ignored), channels(pruned, ignored)
    ratio = 1 - ch1 / ch0 if ch0 else 0.0
    reached = after / before if before else 1.0
    plan.update(
        ratio=round(ratio, 4),
        importance=importance,
        round_to=round_to,
        scope=scope,
        target=getattr(target, "name", target),
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
        unverified_why={k: v for s in steps for k, v in s.get("unverified_why", {}).items()},
        frozen={k: v for s in steps for k, v in s.get("frozen", {}).items()},
        floored=sorted({g for s in steps for g in s.get("floored", [])}),
    )
    if not isinstance(target, str):
        plan["latency"] = _latency_plan(target, before, after, fraction, steps[-1])
    _warn_spread(plan)
    return PruneResult(
        pruned, plan, ratio, macs0, macs1, params0, params1, target, fraction, reached
    )


def _latency_plan(target, dense: float, achieved: float, fraction: float, step: dict) -> dict:
    """Target, table prediction and result (measured here, or estimated for a device
    profile) of a latency-targeted pruning (ms)."""
    table = target.table or {}
    # what no width can remove: the per-call cost and the operators' fixed parts
    floor = planner_terms(table)[1] if table else None
    return {
        "measured_on": str(target),
        "how": target.how,
        "dense_ms": dense,
        "target_ms": fraction * dense,
        "predicted_ms": step.get("predicted"),
        "achieved_ms": achieved,
        "weighing": target.weighing,  # a step's cost to the model (prune.latency_weighing)
        "table": {
            **{
                k: table.get(k)
                for k in ("configs", "overhead_ms", "per_operator_ms", "fit_error_max", "how")
            },
            "width_independent_ms": floor,
        },
    }


def _warn_spread(plan: dict) -> None:
    """Say where the cut could not go and where it went as far as allowed, and which groups
    were not checked exactly: the numbers a user needs to judge the plan."""
    if plan["frozen"]:
        log(
            f"[prune] warning: {len(plan['frozen'])} channel group(s) keep their width: "
            + "; ".join(f"{k!r} ({v})" for k, v in plan["frozen"].items())
        )
    if plan.get("removed_blocks"):
        log(
            f"[prune] {len(plan['removed_blocks'])} residual block(s) removed whole, their skip "
            f"path kept: {', '.join(plan['removed_blocks'])}"
        )
    if plan["floored"]:
        log(
            f"[prune] warning: {len(plan['floored'])} channel group(s) cut to their floor "
            f"(prune.min_width of the width): {', '.join(plan['floored'])}"
        )
    for root, why in plan["unverified_why"].items():
        log(f"[prune] warning: group {root!r} {why}")
