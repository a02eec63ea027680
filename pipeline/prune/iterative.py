"""Iterative pruning: prune -> fine-tune along the cubic schedule (Zhu & Gupta 2017), one
plan step per pruning."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ground.errors import UsageError
from pipeline.prune.budget import _prune_global, _prune_step
from pipeline.prune.counting import count, measure
from pipeline.prune.oneshot import PruneResult, _check_args, _reached, _result
from pipeline.prune.plan import step_plan


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
    schedule = cubic_schedule(fraction, steps)
    current, records = _prune_and_finetune(
        dense, example, cfg, data, finetune, round_to, ignored, schedule, total
    )
    return _reached(
        _result(
            dense,
            current,
            example,
            _plan(records),
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


def _prune_and_finetune(dense, example, cfg, data, finetune, round_to, ignored, schedule, total):
    """One pruning to keep * total and one fine-tune per kept fraction of the schedule.
    Returns the last model and the step records."""
    search = _prune_global if cfg.scope == "global" else _prune_step
    current, records = dense, []
    for t, keep in enumerate(schedule, start=1):
        # a recipe-fixed head ratio is a fraction of the dense heads: all of it at step 1
        heads = cfg.head_pruning_ratio if t == 1 or cfg.head_pruning_ratio is None else 0.0
        current, record = search(
            current,
            example,
            keep * total,
            cfg.target,
            cfg.importance,
            round_to,
            ignored,
            data,
            heads,
            t,
            cfg.min_width,
        )
        record["kept_fraction_goal"] = round(keep, 4)
        records.append(record)
        finetune(current, t)
        current.eval()
    return current, records


def _plan(records) -> dict:
    """One history per step, replayed in order; the last step's attributes are the model's."""
    return {
        "steps": [{**step_plan(r), "kept_fraction_goal": r["kept_fraction_goal"]} for r in records],
        "attributes": records[-1]["attributes"],
        "schedule": "cubic (Zhu & Gupta 2017)",
    }
