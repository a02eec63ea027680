"""What each channel group's narrower widths cost the model, so that a measured target (latency)
can weigh groups against each other: by default the share of the model's MACs a step removes
(prune.latency_weighing macs), the plan that keeps the most compute for the time; or the
divergence of the outputs it causes, measured (divergence).

The chosen criterion ranks channels within a group, but its scores do not compare across
groups (a magnitude in a 16-channel stem is not a magnitude in a 64-channel block). So, as in
Li et al. 2017's sensitivity analysis and NetAdapt (Yang et al. 2018), each group is pruned
alone to each of its allowed widths, the criterion choosing which channels go, and the change
of the model's outputs is measured on training images: the KL divergence of the pruned model's
class distribution from the unpruned one's. The planner then spends it like HALP's importance
(Shen et al. 2022): the step that saves the most time per unit of divergence goes first. A
residual block's cost is the divergence with the block removed (prune/blocks.py).

The divergence is measured before any fine-tuning, when a removed block or a narrowed layer
has not yet been compensated for; the MAC share judges every step by the capacity it leaves.
At equal latency after fine-tuning the MAC share did as well or better (benchmarks/RESULTS.md,
issue 27: ResNet-20 int8 at half the latency, 76.7 % against 75.0 % on the 10k JPEG test set,
6 % faster), and it needs no pruned copy run, so it is the default."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp

from pipeline.prune.blocks import identity_losses, inside
from pipeline.prune.surgery import _prune_copy
from pipeline.prune.widths import _Analysis, predicted_cost

# enough for the divergence to rank steps at 32x32; each of ~40-200 pruned copies runs them
# once, so larger inputs take fewer images (8 at 224x224, about the same pixels) and measure
# fewer widths per group (the first and the floor always): MobileNetV2 at 224 in about 3 minutes
IMAGES, PIXELS = 256, 256 * 32 * 32
POINTS, LARGE_POINTS, LARGE = 8, 4, 64 * 64  # widths measured per group; LARGE: pixels/image


def group_losses(
    model, example, ana: _Analysis, importance, round_to, data, seed, images: np.ndarray
) -> dict:
    """Per group that may narrow: the divergence on `images` at each of its choices (0 at full
    width), measured at up to `points` of them spread over the range and interpolated between (a
    576-channel layer has 54 choices at round_to 8), made non-decreasing as the width drops (a
    narrower width never counts as a gain)."""
    x = torch.from_numpy(_sample(images, seed))
    points = LARGE_POINTS if int(np.prod(x.shape[2:])) > LARGE else POINTS
    with torch.no_grad():
        reference = F.log_softmax(model(x), dim=-1)
    out = {}
    for gi, g in enumerate(ana.groups):
        if (
            g.block
            or g.frozen
            or len(g.choices) < 2
            or (g.qkv is not None and ana.head_ratio is not None)
        ):
            continue
        at = np.unique(np.round(np.linspace(0, len(g.choices) - 1, points)).astype(int))
        kl = [0.0]
        for i in at[1:]:
            kept = {gi: g.choices[i]}
            pruned, _ = _prune_copy(model, example, ana, kept, importance, round_to, data, seed)
            with torch.no_grad():
                out_i = F.log_softmax(pruned(x), dim=-1)
            kl.append(float(F.kl_div(out_i, reference, log_target=True, reduction="batchmean")))
        curve = np.interp(np.arange(len(g.choices)), at, kl)
        out[gi] = np.maximum.accumulate(curve)
    kls = identity_losses(model, x, reference, [ana.groups[gi].root for gi in ana.blocks])
    out.update({gi: np.array([0.0, kl]) for gi, kl in zip(ana.blocks, kls)})
    return out


def _sample(x: np.ndarray, seed) -> np.ndarray:
    n = min(len(x), IMAGES, max(8, PIXELS // int(np.prod(x.shape[2:]))))
    pick = np.random.default_rng(seed).choice(len(x), n, replace=False)
    return np.ascontiguousarray(x[np.sort(pick)], dtype=np.float32)


def mac_counts(model, example, ana: _Analysis) -> _Analysis:
    """The analysis with MACs as its cost (predicted_cost counts a plan's MACs): each layer's
    count scaled by the keep-fractions of the groups and blocks that hold it."""
    _, _, per_layer, _ = tp.utils.count_ops_and_params(model, example, layer_wise=True)
    roots = [(gi, ana.groups[gi].root) for gi in ana.blocks]
    terms = [
        (float(per_layer[m]), ana.member.get(n, ()) + tuple(gi for gi, r in roots if inside(n, r)))
        for n, m in model.named_modules()
        if next(m.children(), None) is None and per_layer.get(m)
    ]
    return _Analysis(ana.groups, terms, 0.0, ana.ignored)


def mac_losses(model, example, ana: _Analysis) -> dict:
    """Per group that may narrow: the share of the model's MACs gone at each of its choices."""
    macs = mac_counts(model, example, ana)
    full = predicted_cost(macs, {})
    return {
        gi: np.array([full - predicted_cost(macs, {gi: c}) for c in g.choices]) / full
        for gi, g in enumerate(ana.groups)
        if len(g.choices) > 1 and not g.frozen
    }
