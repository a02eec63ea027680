"""torch-pruning's dependency graph and the modules it prunes or must leave alone: the graph
built quietly, channel groups, fused attention, ignored layers (and an error in one line)."""

from __future__ import annotations

import warnings

import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import index_mapping

from ground.errors import UsageError


class GroupFailure(UsageError):
    """Pruning one channel group failed; `root` names its root layer (None: not yet known)."""

    def __init__(self, message: str, root: str | None, reason: str):
        super().__init__(message)
        self.root, self.reason = root, reason


def _build_graph(model, example):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Uu]nwrapped parameters.*")
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    _drop_traced_caches(model)
    return dg


def _release_trace(dg) -> None:
    """The graph's nodes keep the traced forward's autograd functions, which hold that forward's
    activations, in reference cycles that Python's collector frees only when its object counts
    say so: MobileNetV2 at 224 grew past 11 GB over a budget loop's pruned copies. torch-pruning
    reads them while it builds the graph and prunes (a slice's), so they go once it is done."""
    for node in dg.module2node.values():
        node.grad_fn = None
        if isinstance(node.module, tp.ops._SliceOp):
            node.module.grad_fn = None
        elif isinstance(node.module, tp.ops._ElementWiseOp):
            node.module._grad_fn = None


def _drop_traced_caches(model) -> None:
    """Tracing runs an eval-mode forward with gradients on; attention that caches its bias
    table in eval mode (timm's LeViT, TinyViT, EfficientFormer) keeps it as a non-leaf tensor,
    which deepcopy refuses, and from before any head is pruned. Those modules drop the cache
    when their mode is set, so setting eval mode again drops it."""
    model.eval()


def _reshape_with_unknown_channels_left_alone(map_reshape):
    """torch-pruning (1.6.1) infers a reshape's channel counts through split and concat; for a
    channel shuffle whose next block splits the channels and passes one half straight into a
    concat (torchvision's ShuffleNetV2) it infers 0 and divides by zero, while building the
    graph and again at every group it hands out. Such a reshape is left without an index
    mapping, as torch-pruning leaves one whose channels it cannot infer (None); the groups
    through it are then checked exactly like any other, and frozen where pruning them is wrong.
    Installed once, in torch-pruning's module, because that is where its graph looks it up;
    it changes nothing where the library does not divide by zero."""

    def guarded(graph, node) -> None:
        try:
            map_reshape(graph, node)
        except ZeroDivisionError:  # raised before any mapping is assigned
            pass

    guarded.slimship_guard = True
    return guarded


if not getattr(index_mapping.update_reshape_index_mapping, "slimship_guard", False):
    index_mapping.update_reshape_index_mapping = _reshape_with_unknown_channels_left_alone(
        index_mapping.update_reshape_index_mapping
    )


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


def _all_groups(dg, names: dict, ignored: list, root_types) -> tuple[list, dict[str, str]]:
    """dg.get_all_groups(ignored, root_types), going on past a group torch-pruning cannot
    build (its index mapping fails while following the channels, e.g. through a reshape it
    could not size), which get_all_groups would stop at. Returns the prunable groups, and the
    root layers of those it could not build with why: left out as ignored roots, the pruner's
    own get_all_groups passes them by and they keep their width."""
    ignored = set(ignored) | set(dg.IGNORED_LAYERS_IN_TRACING)
    visited, groups, failed = set(), [], {}
    for module in list(dg.module2node):
        pruner = dg.get_pruner_of_module(module)
        if module in ignored or module in visited or not isinstance(module, tuple(root_types)):
            continue
        width = pruner.get_out_channels(module) if pruner is not None else None
        if width is None:
            continue
        try:
            group = dg.get_pruning_group(module, pruner.prune_out_channels, list(range(width)))
        except Exception as e:  # noqa: BLE001  (any failure here is the finding)
            failed[names[module]] = f"torch-pruning cannot follow its channels ({_short(e)})"
            ignored.add(module)
            continue
        removed = {d.target.module for d, _ in group if dg.is_out_channel_pruning_fn(d.handler)}
        visited |= removed
        if not removed & ignored:
            groups.append(group)
    return groups, failed
