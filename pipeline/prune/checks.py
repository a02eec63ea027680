"""The checks on a pruned copy: it runs and keeps the output shape, and computes what the dense
model computes on the kept channels; a failure names the layer and the ignored_layers entry."""

from __future__ import annotations

import copy

import torch

from ground.errors import UsageError
from pipeline.prune.graph import _build_graph, _short
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
