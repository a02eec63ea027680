"""torch-pruning's dependency graph and the modules it prunes or must leave alone: the graph
built quietly, channel groups, fused attention, ignored layers (and an error in one line)."""

from __future__ import annotations

import warnings

import torch_pruning as tp
from torch import nn

from ground.errors import UsageError


class GroupFailure(UsageError):
    """Pruning one channel group failed; `root` names its root layer (None: not yet known)."""

    def __init__(self, message: str, root: str | None, reason: str):
        super().__init__(message)
        self.root, self.reason = root, reason


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


def _output_layers(dg, names: dict) -> list[str]:
    """The conv/linear layers whose channels are the model's outputs, whatever their type (a
    Linear head, a 1x1 conv before pooling): found walking back from the graph's outputs
    through parameter-free ops and norms. Their output channels are never pruned."""
    seen, found = set(), []
    stack = [n for n in dg.module2node.values() if not n.outputs]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if isinstance(node.module, (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)):
            found.append(names[node.module])
        else:
            stack.extend(node.inputs)
    return sorted(found)


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


def _short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:240]
