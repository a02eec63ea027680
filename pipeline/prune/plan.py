"""Plans: a pruning recorded as torch-pruning's history (plus the attributes it changes), so the
pruned model is rebuilt from the zoo factory without pickle, and lottery-ticket rewinding."""

from __future__ import annotations

import torch
from torch import nn

from ground.errors import UsageError
from models import create_from_spec, example_input, load_state
from pipeline.prune.blocks import remove_blocks
from pipeline.prune.graph import _build_graph, _short


def _pruned_attributes(model: nn.Module) -> dict:
    """Attributes pruning changes besides tensor shapes (attention head count and size)."""
    out = {}
    for name, m in model.named_modules():
        if hasattr(m, "num_heads") and hasattr(m, "head_dim"):
            out[name] = {"num_heads": int(m.num_heads), "head_dim": int(m.head_dim)}
    return out


def step_plan(record: dict) -> dict:
    """What a pruning step's record keeps in the plan: its torch-pruning history, the
    attributes it set, the residual blocks it removed whole."""
    keys = (("history", []), ("attributes", {}), ("removed_blocks", []))
    return {k: record.get(k, d) for k, d in keys}


def apply_plan(
    model: nn.Module, plan: dict, example: torch.Tensor, attributes: bool = True
) -> nn.Module:
    """Replay a saved plan on a fresh model of the same architecture (in place; returned).

    A plan holds one pruning history (one-shot) or `steps`, one history per iterative step;
    each step is replayed on a freshly traced dependency graph, then its residual blocks
    removed whole are replaced by their skip path and its attributes are set.
    """
    steps = plan.get("steps") or [step_plan(plan)]
    modules = dict(model.named_modules())
    for step in steps:
        if step["history"]:
            dg = _build_graph(model.eval(), example)
            dg.load_pruning_history([tuple(h) for h in step["history"]])
        remove_blocks(model, step.get("removed_blocks", ()))
        if attributes:
            _set_attributes(modules, step.get("attributes", {}))
    if attributes:
        _set_attributes(modules, plan.get("attributes", {}))
    return model


def _set_attributes(modules: dict[str, nn.Module], attributes: dict) -> None:
    for name, attrs in attributes.items():
        for k, v in attrs.items():
            setattr(modules[name], k, v)


def rewind(pruned_model: nn.Module, plan: dict, initial_state_dict: dict, spec: dict) -> nn.Module:
    """Lottery-ticket rewinding (Frankle & Carbin 2019): the pruned structure, its surviving
    weights reset to their values at initialisation (or at an early rewind checkpoint).

    A fresh zoo model gets `initial_state_dict` (dense shapes), then the plan is replayed: its
    channel indices select the same survivors the pruned model kept.
    """
    model = create_from_spec(spec)
    try:
        load_state(model, initial_state_dict)
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
