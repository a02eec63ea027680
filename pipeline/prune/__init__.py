"""Structured channel pruning on torch-pruning's dependency graph, to a MAC/parameter/channel
target or to a latency measured through the target's runtime (pipeline/prune/latency.py) or
estimated on a device profile (device_latency.py); for a latency target, channel groups narrowed
and residual blocks removed whole (blocks.py), each step weighed by the share of the MACs it
removes or by the measured change of the outputs it causes (sensitivity.py);
iterative pruning with a cubic schedule, lottery-ticket rewinding, and unstructured magnitude
pruning as the comparison that buys no speed.

Removing whole channels is what becomes speed on a phone: every pruned group shrinks the
dense conv/linear kernels XNNPACK runs. The result is recorded as a plan (torch-pruning's
pruning history) so the pruned model can be rebuilt from the zoo factory without pickle.

How a target is met. torch-pruning prunes one ratio per layer and rounds the channels that
remain *down* to a multiple of `round_to`, so one uniform ratio jumps in coarse steps on
narrow layers (a 16-channel layer with round_to=8 is either 16 or 8 wide). The planner here
reads the dependency graph once, writes the counted cost (MACs, parameters or channels) of
every layer as a product of the keep-fractions of the groups that shape it, and chooses the
kept width of every group from the widths round_to allows: it removes one step at a time from
the group that stays widest after the step (so the layers shrink about evenly), then gives
steps back where the budget still allows. The widths become torch-pruning's per-layer
`pruning_ratio_dict` (attention heads: `head_pruning_ratio_dict`); the importance criterion
still picks *which* channels go. The pruned model is counted again, and the budget corrected
if the cost model missed (it leaves out ops outside modules, e.g. ReLU counted as a module).

What is verified. Pruning runs on copies; the caller's model is never modified. After
pruning, every group whose layers are channel-local (conv, linear, batch norm, ...) is checked
exactly: the pruned model must compute what the dense model computes with the removed
channels zeroed where they are produced and where they are consumed. An op torch-pruning does
not know (it treats unknown ops as element-wise: torch.roll over channels, a channel shuffle,
a module with its own weight used in forward) breaks this or crashes, and the error names the
layer and the `prune.ignored_layers` entry that avoids it.
"""

from pipeline.prune.counting import channels, count, layer_widths
from pipeline.prune.iterative import cubic_schedule, prune_iteratively
from pipeline.prune.oneshot import prune, prune_to_macs, prune_with_config
from pipeline.prune.plan import apply_plan, rewind
from pipeline.prune.unstructured import (
    apply_masks,
    masks_of_zeros,
    prune_unstructured,
    remove_masks,
)

__all__ = [
    "apply_masks",
    "apply_plan",
    "channels",
    "count",
    "cubic_schedule",
    "layer_widths",
    "masks_of_zeros",
    "prune",
    "prune_iteratively",
    "prune_to_macs",
    "prune_unstructured",
    "prune_with_config",
    "remove_masks",
    "rewind",
]
