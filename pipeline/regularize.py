"""Sparsity training: options that make a later channel pruning cheap.

- group lasso (Wen et al. 2016, structured sparsity learning): lambda * sum_g ||W_g||_2 over
  channel groups. A group is everything torch-pruning's dependency graph ties to one channel
  (the conv's output filter, its batch-norm scale and shift, the next layers' input slices), so
  the penalty drives whole prunable groups to zero, the unit the pruner removes.
- L1 on batch-norm scales (network slimming, Liu et al. 2017): lambda * sum |gamma|.
- targeted dropout (Gomez et al. 2019): in every training step, of each conv/linear layer's
  output channels the `fraction` with the lowest-L2 filters are candidates, and each candidate is
  dropped (its output zeroed, after the batch norm, per sample) with probability `rate`. The
  network learns not to rely on the channels magnitude pruning will remove.
- unit dropout, the control: the same, with every channel a candidate.

Penalties are loss terms (autograd differentiates them, DDP averages their gradients with the
rest); dropouts are forward hooks active in training mode only, removed after training so
that the saved model is a plain one. The classifier (last Linear) is left alone:
pruning never removes its outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch_pruning as tp
from torch import nn

from ground.log import log

_F = tp.pruner.function
# handlers whose weight rows (dim 0) belong to the channel; a depthwise conv's rows are its
# channels (its "input channel" handler names the same rows, so it is not counted twice)
_OUT = (
    _F.prune_conv_out_channels,
    _F.prune_linear_out_channels,
    _F.prune_depthwise_conv_out_channels,
)
_IN = (_F.prune_conv_in_channels, _F.prune_linear_in_channels)  # weight columns (dim 1)
_BN = (_F.prune_batchnorm_out_channels, _F.prune_layernorm_out_channels)


def _classifier(model: nn.Module) -> nn.Module | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def group_lasso(model: nn.Module, example: torch.Tensor) -> Callable[[], torch.Tensor]:
    """sum over channel groups of the L2 norm of every weight slice tied to the channel."""
    from pipeline.prune.graph import _build_graph

    dg = _build_graph(model.eval(), example)
    ignored = [m for m in [_classifier(model)] if m is not None]
    slices = []  # (root channel index per slice row, tensor getter)
    for group in dg.get_all_groups(
        root_module_types=[nn.Conv2d, nn.Linear], ignored_layers=ignored
    ):
        parts = []
        for i, (dep, idxs) in enumerate(group):
            layer, fn = dep.target.module, dep.handler
            roots = torch.tensor(group[i].root_idxs, dtype=torch.long)
            idx = torch.tensor(idxs, dtype=torch.long)
            if (fn in _OUT or fn in _BN) and getattr(layer, "weight", None) is not None:
                parts.append((roots, layer.weight, 0, idx))
            elif fn in _IN and getattr(layer, "groups", 1) == 1:  # depthwise: its rows count
                parts.append((roots, layer.weight, 1, idx))
        if parts:
            n = max(int(r.max()) for r, *_ in parts) + 1
            slices.append((n, parts))

    def penalty() -> torch.Tensor:
        total = torch.zeros(())
        for n, parts in slices:
            sq = torch.zeros(n)
            for roots, w, dim, idx in parts:
                s = w.index_select(dim, idx).pow(2)
                s = s.transpose(0, dim).reshape(len(idx), -1).sum(1)  # one sum per channel
                sq = sq.index_add(0, roots, s)
            total = total + (sq + 1e-12).sqrt().sum()
        return total

    return penalty


def bn_l1(model: nn.Module) -> Callable[[], torch.Tensor]:
    scales = [
        m.weight
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
    ]
    return lambda: sum((g.abs().sum() for g in scales), torch.zeros(()))


class _ChannelDrop:
    """Forward hook on the module whose output carries a layer's channels (the batch norm right
    after a conv when there is one, else the layer itself): in training mode, each sample's
    output channels are zeroed at random among the `fraction` with the lowest-L2 filters
    (fraction 1: among all), and the kept candidates scaled by 1/(1 - rate), as nn.Dropout does,
    so that eval mode (the identity) sees the same expected activations.

    Dropping after the batch norm matters: a filter zeroed before it would be normalised to the
    norm's shift (not dropped), and its running statistics would mix in the zero batches, so the
    eval-mode network would see activations it never trained on (measured: ResNet-20 at chance).
    """

    def __init__(self, layer: nn.Module, rate: float, fraction: float, generator: torch.Generator):
        self.layer, self.rate, self.fraction, self.gen = layer, rate, fraction, generator

    def candidates(self) -> torch.Tensor:
        w = self.layer.weight.detach()
        n = w.shape[0]
        if self.fraction >= 1:
            return torch.ones(n, dtype=torch.bool)
        k = round(self.fraction * n)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[w.reshape(n, -1).norm(dim=1).argsort()[:k]] = True
        return mask

    def __call__(self, module: nn.Module, args, out: torch.Tensor) -> torch.Tensor:
        if not module.training or self.rate == 0:
            return out
        dim = 1 if out.dim() > 2 else out.dim() - 1  # NCHW: channels at 1; (..., C) for linear
        n = out.shape[dim]
        shape = [1] * out.dim()
        shape[dim] = n
        if dim != 0:
            shape[0] = out.shape[0]  # one draw per sample, as dropout does
        cand = self.candidates().reshape([n if i == dim else 1 for i in range(out.dim())])
        drop = cand & (torch.rand(shape, generator=self.gen) < self.rate)
        scale = torch.where(cand, 1 / (1 - self.rate), 1.0).to(out.dtype)
        return out * (~drop).to(out.dtype) * scale


def _channel_outputs(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(layer, module whose output carries the layer's channels) for every conv/linear layer but
    the classifier: a batch norm registered right after a conv of its width, else the layer."""
    head = _classifier(model)
    mods = list(model.modules())
    pairs = []
    for i, m in enumerate(mods):
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or m is head:
            continue
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        width = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        bn = (
            isinstance(m, nn.Conv2d)
            and isinstance(nxt, nn.modules.batchnorm._BatchNorm)
            and nxt.num_features == width
        )
        pairs.append((m, nxt if bn else m))
    return pairs


def add_channel_dropout(model: nn.Module, rate: float, fraction: float, seed: int = 0) -> list:
    """Hook every conv/linear layer's channel output but the classifier's; returns the handles
    (pass them to `remove_channel_dropout`)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        out.register_forward_hook(_ChannelDrop(layer, rate, fraction, gen))
        for layer, out in _channel_outputs(model)
    ]


def remove_channel_dropout(handles: list) -> None:
    for h in handles:
        h.remove()


class SparsityTraining:
    """The train config's options around one `fit`: `wrap(loss_fn)` adds the penalties,
    `close()` removes the dropout hooks. `describe()` says what was on."""

    def __init__(self, model: nn.Module, example: torch.Tensor, cfg, seed: int = 0):
        self.cfg, self.terms, self.dropped = cfg, [], []
        if cfg.group_lasso:
            self.terms.append((cfg.group_lasso, group_lasso(model, example)))
        if cfg.bn_l1:
            self.terms.append((cfg.bn_l1, bn_l1(model)))
        if cfg.targeted_dropout:
            self.dropped = add_channel_dropout(
                model, cfg.targeted_dropout, cfg.targeted_fraction, seed
            )
        elif cfg.dropout:
            self.dropped = add_channel_dropout(model, cfg.dropout, 1.0, seed)
        if self.active:
            log(f"sparsity training: {self.describe()['summary']}")

    @property
    def active(self) -> bool:
        return bool(self.terms or self.dropped)

    def wrap(self, loss_fn):
        if not self.terms:
            return loss_fn

        def loss(logits, y, x):
            return loss_fn(logits, y, x) + sum(lam * term() for lam, term in self.terms)

        return loss

    def close(self) -> None:
        remove_channel_dropout(self.dropped)
        self.dropped = []

    def describe(self) -> dict:
        c = self.cfg
        on = []
        if c.group_lasso:
            on.append(f"group lasso {c.group_lasso:g} (Wen et al. 2016)")
        if c.bn_l1:
            on.append(f"L1 on batch-norm scales {c.bn_l1:g} (network slimming)")
        if c.targeted_dropout:
            on.append(
                f"targeted dropout {c.targeted_dropout:g} of the lowest "
                f"{c.targeted_fraction:.0%} channels (Gomez et al. 2019)"
            )
        if c.dropout:
            on.append(f"channel dropout {c.dropout:g}, untargeted (the control)")
        return {"summary": "; ".join(on) or "none"}  # the figures are in the recipe
