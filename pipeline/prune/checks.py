"""The checks on a pruned copy: it runs and keeps the output shape, and computes what the dense
model computes on the kept channels; a failure names the layer and the ignored_layers entry."""

from __future__ import annotations

import copy

import torch

from pipeline.prune.graph import GroupFailure, _build_graph, _short
from pipeline.prune.plan import apply_plan
from pipeline.prune.reference import _fix_heads, _same, _zero_entry
from pipeline.prune.suspects import _graph_with_owners, _suspects


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
    root = culprit[0] if culprit else None
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
    entry = repr(root) if root else "the layer whose channels it removed"
    raise GroupFailure(
        f"prune: after removing channels{' of ' + entry if root else ''}, {layer} fails: "
        f"{what}. torch-pruning cannot follow the channels through it; add {entry} to "
        "prune.ignored_layers in the recipe",
        root,
        f"the pruned model fails in {layer}: {what}",
    )


def _verify(dense, pruned, example, history) -> dict:
    """Exactness on every group whose layers are channel-local; a static scan for channel-
    mixing ops on the others (layer norm, grouped conv: the zeroed channels would still count).
    Returns {"verified": [roots], "unverified": [roots], "unverified_why": {root: why}};
    raises GroupFailure naming the group's root."""
    if not history:
        return {"verified": [], "unverified": [], "unverified_why": {}}
    checkable, blocking = [], {}
    masked = copy.deepcopy(dense).eval()
    owners, dg = _graph_with_owners(masked, example)
    for entry in history:
        layers = _zero_entry(dg, entry, dry_run=True)
        if layers:
            blocking[entry[0]] = layers
        else:
            checkable.append(entry)
    for entry in checkable:
        _zero_entry(dg, entry)
    if checkable:
        _check_exact(dense, masked, example, checkable)
    for entry in history:
        suspects = _suspects(owners, dg, entry, mixing_only=True) if entry[0] in blocking else []
        if suspects:
            raise GroupFailure(
                f"prune: removing channels of {entry[0]!r} goes through {', '.join(suspects)}, "
                f"which torch-pruning treats as element-wise; add {entry[0]!r} to "
                "prune.ignored_layers in the recipe",
                entry[0],
                f"goes through {', '.join(suspects)}, which torch-pruning treats as element-wise",
            )
    return {
        "verified": [e[0] for e in checkable],
        "unverified": list(blocking),
        "unverified_why": {
            root: "not checked exactly: its channels pass through "
            + ", ".join(layers)
            + ", which mix channels (zeroing them is not the same as removing them)"
            for root, layers in blocking.items()
        },
    }


def _check_exact(dense, masked, example, checkable) -> None:
    """The pruned groups compute what the dense model computes with their channels zeroed."""
    ref = apply_plan(copy.deepcopy(dense).eval(), {"history": checkable}, example, attributes=False)
    _fix_heads(ref, dense)
    if _same(masked, ref, example):
        return
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
    raise GroupFailure(
        f"prune: removing channels of {bad[0]!r} changes what the kept channels compute: "
        f"torch-pruning does not follow an op between that layer and its consumers{hint}. "
        f"Add {bad[0]!r} to prune.ignored_layers in the recipe",
        bad[0],
        "torch-pruning does not follow an op between it and its consumers (the kept "
        "channels would compute something else)" + (f": {', '.join(suspects)}" if suspects else ""),
    )


def _first_failing_entry(dense, example, entries, fails, exact=False):
    """Replay history entries one at a time on fresh copies; the first that breaks."""
    for entry in entries:
        m = copy.deepcopy(dense).eval()
        try:
            apply_plan(m, {"history": [entry]}, example, attributes=False)
        except Exception:  # noqa: BLE001  (any failure here is the finding)
            return entry
        _fix_heads(m, dense)
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
