"""What a model costs, counted and estimated (issue 5).

Counted, from the PyTorch model:
- `count_layers` (count.py, the cost of each aten op in ops.py) / `layer_table` (table.py): per
  layer (conv, depthwise conv, linear/matmul, pool, add, other), MACs, other arithmetic, weight
  bytes and activation bytes in and out at a precision.

Estimated, for a device profile (targets/devices.yaml), issue 28:
- device_model.py: per layer, max(MACs / (the used cores' peak x efficiency), DRAM bytes /
  bandwidth) (elementwise and data-movement layers by bytes per cycle) + the runtime's own
  per-operator cost, summed, + its per-call cost, x a device factor; threads placed on the
  profile's core clusters, fastest first. Its factors (`DeviceFit`, device_fit.py) are fitted
  on published on-device latencies (benchmarks/device_validation.py ->
  targets/device_calibration.json), which also carries each device's held-out error.
- `estimate_energy` (energy.py): MACs x pJ/MAC + DRAM bytes x pJ/byte from the device's energy
  model.
- `estimate_for_devices` (per_device.py): both, for a list of devices, as report figures: the
  latency to 2 significant digits, its p10-p90 range and the validated error, or `unvalidated`.

Estimated for this host (benchmarks/estimator.py only):
- `estimate_latency` (roofline.py): the per-layer roofline on a `Machine` (machine.py) with
  efficiency factors fitted on this host (`HostFit`, hostfit.py ->
  targets/host_calibration.json) from ExecuTorch XNNPACK latencies of the zoo models and random
  networks, with its leave-one-model-out error on this host. No device estimate uses it.

Measured / counted from exported files live in pipeline/profile.py (`peak_rss`) and, for
ExecuTorch, in targets/executorch_xnnpack.py (`planned_memory`, `op_breakdown`, reached
through the backend's `profile_extras`).
"""

from pipeline.estimate.count import Layer, count_layers
from pipeline.estimate.device_fit import DEVICE_FIT_PATH, DeviceFit, load_device_fit
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
    "DEVICE_FIT_PATH",
    "EFF_CLASSES",
    "HOST_FIT_PATH",
    "KIND_CLASS",
    "PARALLEL_CLASSES",
    "DeviceFit",
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
    "load_device_fit",
    "load_host_fit",
    "roofline_ms",
    "this_cpu",
    "weights_resident",
]
