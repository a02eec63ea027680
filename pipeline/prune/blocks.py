"""Depth pruning for a latency target: whole residual blocks replaced by their skip path.

Narrowing channels cannot remove what a layer costs whatever its width: the runtime's per-
operator work, the add and activation of every block. On ResNet-20/56 int8 under XNNPACK that
is 40 % or more of the time, so channel pruning alone gets 0.3-0.5 of the speed-up its MAC cut
promises. Removing a block removes all of it (Veit et al. 2016: residual networks behave like
ensembles of paths and survive losing single blocks; Elkerdawy et al. 2020 found layer pruning
faster than filter pruning at the same accuracy). A block is a module whose output keeps its
input's shape and reaches its input through an addition and no weighted operator (the skip):
then the module with its branch silenced computes its input, which nn.Identity does exactly
(ResNet's trailing ReLU passes the already non-negative input unchanged). Only the innermost such
modules count (a ResNet stage of blocks is one too), and each one's cost to the model is
measured like a channel group's: the divergence of the outputs with it replaced."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# autograd functions of weighted operators: a path through one is the branch, not the skip
_WEIGHTED = ("Convolution", "Addmm", "Mm", "Bmm", "Linear", "Baddbmm")


def residual_blocks(model: nn.Module, example: torch.Tensor, keep: list[str]) -> list[str]:
    """Names of the innermost modules with a skip path around their weighted layers, in call
    order, none of them holding a layer of `keep` (ignored or output layers)."""
    found, hooks, entered = [], [], {}

    def pre(mod, args):  # the input's autograd function before the module changes anything
        entered[mod] = args[0].grad_fn if args and torch.is_tensor(args[0]) else None

    def post(name):
        def hook(mod, args, out):
            src = entered.pop(mod, None)
            same = torch.is_tensor(out) and out.shape == args[0].shape
            if src is not None and same and _reaches(out.grad_fn, src):
                found.append(name)

        return hook

    for name, mod in model.named_modules():
        if name and _weighted(mod) and not any(inside(k, name) for k in keep):
            hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post(name))]
    try:
        with torch.enable_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    found = list(dict.fromkeys(found))  # a module called twice is one block
    return [n for n in found if not any(o != n and inside(o, n) for o in found)]


def _weighted(mod: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) for m in mod.modules())


def _reaches(fn, target) -> bool:
    """Whether autograd function `target` is reachable from `fn` through an addition (where
    the skip joins the branch) and no weighted operator. A gate (squeeze-excitation multiplies
    its input) is no skip."""
    stack, seen = [(fn, False)], set()
    while stack:
        f, added = stack.pop()
        if f is None or (f, added) in seen:
            continue
        if f is target:
            if added:
                return True
            continue
        seen.add((f, added))
        name = type(f).__name__
        if not name.startswith(_WEIGHTED):
            added = added or name.startswith("AddBackward")
            stack.extend((g, added) for g, _ in f.next_functions)
    return False


def inside(layer: str | None, block: str) -> bool:
    """Whether module `layer` is `block` or one of its descendants."""
    return layer is not None and (layer == block or layer.startswith(block + "."))


def removable(blocks: list[str], min_width: float) -> int:
    """How many may go: like a channel group, min_width of them stay (at least one)."""
    return len(blocks) - max(1, math.ceil(min_width * len(blocks) - 1e-9)) if blocks else 0


def remove_blocks(model: nn.Module, names) -> nn.Module:
    """Each named block replaced by nn.Identity, in place."""
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
    return model


def identity_losses(model: nn.Module, x: torch.Tensor, reference, names: list[str]) -> list:
    """Per block, the KL divergence of the outputs on `x` from `reference` (log-probabilities)
    with the block computing its input instead."""
    out = []
    for name in names:
        h = model.get_submodule(name).register_forward_hook(lambda m, args, o: args[0])
        try:
            with torch.no_grad():
                logp = F.log_softmax(model(x), dim=-1)
        finally:
            h.remove()
        out.append(float(F.kl_div(logp, reference, log_target=True, reduction="batchmean")))
    return out


def add_block_groups(ana, model: nn.Module, example: torch.Tensor, min_width: float) -> None:
    """The model's residual blocks as two-choice groups of the plan (kept 1, removed 0)."""
    from pipeline.prune.widths import _Group

    names = residual_blocks(model, example, ana.ignored)
    ana.groups += [_Group(n, 1, [1, 0], block=True) for n in names]
    ana.max_blocks = removable(names, min_width)
