"""The quantities a target is a fraction of: MACs and parameters (torch-pruning's op counter)
and the output channels of the prunable layers."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from pipeline.prune.graph import _ignored_modules


def count(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) counted by torch-pruning's op counter."""
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def channels(model: nn.Module, ignored_layers: tuple[str, ...] = ()) -> int:
    """Output channels/features of every conv and linear layer, classifier and ignored excepted."""
    names = _ignored_modules(model, ignored_layers)
    return sum(
        w
        for n, w in layer_widths(model).items()
        if not any(n == i or n.startswith(i + ".") for i in names)
    )


def measure(
    model: nn.Module, example: torch.Tensor, target: str, ignored_layers: tuple[str, ...] = ()
) -> int:
    """The quantity a target is a fraction of: MACs, parameters or prunable channels, or a
    measured target's own figure (latency, ms)."""
    if not isinstance(target, str):
        return target.measure(model, example)
    if target == "channels":
        return channels(model, ignored_layers)
    macs, params = count(model, example)
    return macs if target == "macs" else params


def _pick(target, macs: int, params: int, model, example, ignored_layers) -> float:
    """measure(), from MACs and parameters already counted where the target is one of them."""
    if target in ("macs", "params"):
        return macs if target == "macs" else params
    return measure(model, example, target, ignored_layers)


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels/features of every conv and linear layer, for before/after tables."""
    return {
        n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }
