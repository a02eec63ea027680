"""What a model costs, counted and estimated (issue 5).

Counted, from the PyTorch model:
- `count_layers` (count.py, the cost of each aten op in ops.py) / `layer_table` (table.py): per
  layer (conv, depthwise conv, linear/matmul, pool, add, other), MACs, other arithmetic, weight
  bytes and activation bytes in and out at a precision.

Estimated, for a device profile (targets/devices.yaml):
- `estimate_latency` (roofline.py): per-layer roofline, time = max(MACs / (peak x
  efficiency[op class]), bytes / (DRAM bandwidth x bw efficiency)) + a fixed per-layer overhead,
  summed, on a `Machine` (machine.py). The efficiency factors (`HostFit`, hostfit.py) are fitted
  on this host (benchmarks/estimator.py -> targets/host_calibration.json) from ExecuTorch
  XNNPACK latencies of the zoo models and of random networks (benchmarks/synthetic_models.py);
  the file also carries the estimator's leave-one-model-out error on this host, which every
  estimate is reported with.
- `estimate_energy` (energy.py): MACs x pJ/MAC + DRAM bytes x pJ/byte from the device's energy
  model.
- `estimate_for_devices` (per_device.py): both, for a list of devices, as report figures.

Measured / counted from exported files live in pipeline/profile.py (`peak_rss`) and, for
ExecuTorch, in targets/executorch_xnnpack.py (`planned_memory`, `op_breakdown`, reached
through the backend's `profile_extras`).
"""

from pipeline.estimate.count import Layer, count_layers
from pipeline.estimate.energy import estimate_energy
from pipeline.estimate.hostfit import HOST_FIT_PATH, HostFit, load_host_fit, this_cpu
from pipeline.estimate.machine import Machine, dram_bytes, weights_resident
from pipeline.estimate.per_device import estimate_for_devices
from pipeline.estimate.roofline import (
    EFF_CLASSES,
    KIND_CLASS,
    PARALLEL_CLASSES,
    estimate_latency,
    layer_times,
    roofline_ms,
)
from pipeline.estimate.table import layer_table

__all__ = [
    "EFF_CLASSES",
    "HOST_FIT_PATH",
    "KIND_CLASS",
    "PARALLEL_CLASSES",
    "HostFit",
    "Layer",
    "Machine",
    "count_layers",
    "dram_bytes",
    "estimate_energy",
    "estimate_for_devices",
    "estimate_latency",
    "layer_table",
    "layer_times",
    "load_host_fit",
    "roofline_ms",
    "this_cpu",
    "weights_resident",
]
