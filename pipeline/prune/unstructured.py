"""Unstructured magnitude pruning, the comparison that buys no speed, and its masks: folded
into the weights, found again as the zeros of a model, or held while fine-tuning."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ground.errors import UsageError


def prune_unstructured(
    model: nn.Module, sparsity: float, *, remove: bool = True, include_classifier: bool = True
) -> tuple[nn.Module, dict]:
    """Global magnitude pruning of individual weights (conv and linear weights, not biases).

    Works on a copy. With remove=True the masks are folded in (torch.nn.utils.prune.remove):
    the zeros are real zeros in a plain module that exports; fine-tuning would regrow them, so
    fine-tune with remove=False (masks kept as forward pre-hooks) and call `remove_masks` after.
    The counted sparsity is over the pruned weights; on dense kernels (XNNPACK fp32) it buys no
    speed, only compressibility.
    """
    import torch.nn.utils.prune as tprune

    if not 0 <= sparsity < 1:
        raise UsageError(f"prune: unstructured sparsity must be in [0, 1), got {sparsity}")
    m = copy.deepcopy(model).eval()
    layers = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    if not include_classifier:
        layers = layers[:-1] if isinstance(layers[-1][1], nn.Linear) else layers
    if sparsity > 0:
        tprune.global_unstructured(
            [(mod, "weight") for _, mod in layers],
            pruning_method=tprune.L1Unstructured,
            amount=float(sparsity),
        )
        if remove:
            remove_masks(m)
    info = _sparsity_info(m, layers, sparsity)
    return m, info


def remove_masks(model: nn.Module) -> nn.Module:
    """Fold torch.nn.utils.prune masks into the weights, leaving plain modules."""
    import torch.nn.utils.prune as tprune

    for mod in model.modules():
        for name in [
            h._tensor_name
            for h in mod._forward_pre_hooks.values()
            if isinstance(h, tprune.BasePruningMethod)
        ]:
            tprune.remove(mod, name)
    return model


def masks_of_zeros(model: nn.Module) -> dict[str, torch.Tensor]:
    """{module name: weight != 0} for conv/linear layers that hold zeros (unstructured pruning)."""
    return {
        n: (m.weight != 0)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and bool((m.weight == 0).any())
    }


def apply_masks(
    model: nn.Module, masks: dict[str, torch.Tensor], *, hold: bool = False
) -> nn.Module:
    """Zero the masked weights in place; hold=True keeps each mask as a forward pre-hook
    (torch.nn.utils.prune.custom_from_mask) so fine-tuning cannot regrow them: call
    `remove_masks` after training."""
    import torch.nn.utils.prune as tprune

    modules = dict(model.named_modules())
    for name, mask in masks.items():
        if hold:
            tprune.custom_from_mask(modules[name], "weight", mask)
        else:
            with torch.no_grad():
                modules[name].weight.mul_(mask)
    return model


def _sparsity_info(m, layers, asked) -> dict:
    per, zeros, total = {}, 0, 0
    for n, mod in layers:
        w = mod.weight.detach()
        z = int((w == 0).sum())
        per[n] = round(z / w.numel(), 4)
        zeros += z
        total += w.numel()
    return {
        "asked": asked,
        "sparsity": zeros / total if total else 0.0,
        "zeros": zeros,
        "weights": total,
        "per_layer": per,
        "method": "global magnitude (L1), torch.nn.utils.prune",
    }
