"""Latency on a device profile as the pruning target (`--latency-target 3ms@pixel-8`):
estimated, never measured. The estimator's per-layer device model (pipeline/estimate/
device_model.py, fitted on published on-device latencies) supplies both the latency table and
the figure the budget loop checks, so the planner and the report read the same model; every
figure says it is an estimate and carries the device's validated error."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ground.errors import UsageError
from ground.log import log
from pipeline.estimate import device_model as D
from pipeline.estimate.count import count_layers
from pipeline.estimate.device_fit import RUNTIME, load_device_fit
from pipeline.estimate.per_device import validation
from pipeline.prune.latency import _fit, _uniform_configs, grouped, planner_terms, scaled

_TARGET = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*ms\s*@\s*(\S+)\s*$")
LAYER_KINDS = ("conv", "dwconv", "pwconv", "linear")


def parse_device_target(text: str, target: str = "latency") -> tuple[float, str]:
    """`3ms@pixel-8` -> (3.0, "pixel-8"); anything else, an unknown device, or a prune.target
    other than latency, is one line."""
    from targets.devices import get_device

    if target != "latency":
        raise UsageError(
            f"recipe key prune.latency_target {text} goes with prune.target latency, not {target}"
        )
    m = _TARGET.match(text)
    if not m or float(m.group(1)) <= 0:
        raise UsageError(
            f"--latency-target (prune.latency_target) {text}: give a fraction of the dense "
            "model's latency (0.5) or milliseconds on a device profile (3ms@pixel-8)"
        )
    try:
        get_device(m.group(2))
    except UsageError as e:  # it lists the known ones
        raise UsageError(f"--latency-target (prune.latency_target) {text}: {e}") from None
    return float(m.group(1)), m.group(2)


@dataclass
class DeviceLatency:
    """Estimated latency of the model on one device profile, precision and thread count."""

    device: str
    precision: str
    calibration: np.ndarray  # images for the planner's sensitivity when it has no data
    threads: int = 1
    name: str = "latency"
    how: str = "estimated"
    depth: bool = True  # the planner may remove residual blocks whole (prune/blocks.py)
    weighing: str = "macs"  # a step's cost to the model (prune/sensitivity.py)
    table: dict | None = None  # the fitted table of the last analysis (for the report)

    def __str__(self) -> str:
        return (
            f"latency estimated for {self.device} {self.precision}, {self.threads} thread(s), "
            f"{RUNTIME} device model ({self.error_words()})"
        )

    def error_words(self) -> str:
        from targets.devices import get_device, list_devices

        val = validation(
            load_device_fit(), get_device(self.device), {k: get_device(k) for k in list_devices()}
        )
        err = val.get("median_abs_error")
        if err is None:
            return "unvalidated"
        return f"{val['state']}, median error {err['value']:.0%} on {val['rests_on']}'s rows"

    def measure(self, model: nn.Module, example: torch.Tensor) -> float:
        return self._estimate(model, example)[1]

    def confirmed(self, model: nn.Module, example: torch.Tensor) -> float:
        """An estimate does not vary between looks (LatencyCost.confirmed)."""
        return self.measure(model, example)

    def _estimate(self, model: nn.Module, example: torch.Tensor) -> tuple[list, float]:
        """[(layer, kind, ms)] of the layers that run, and the whole call's ms."""
        from targets.devices import get_device

        dev, fit = get_device(self.device), load_device_fit()
        layers = [x for x in count_layers(model, example, self.precision) if x.kind != "fused"]
        cases = D.stack([(D.case_layers(layers, dev), dev, RUNTIME, self.precision, self.threads)])
        t = D.terms(cases, fit)
        per = t["factor"][0] * (np.maximum(t["compute_ms"], t["memory_ms"]) + t["overhead_ms"])
        rows = [(x.name, x.kind, float(ms)) for x, ms in zip(layers, per)]
        return rows, float(D.case_ms(cases, fit, t)[0])

    def fitted(self, model, example, ana, prune_copy, now_ms: float) -> tuple[list, float]:
        """Cost terms and constant (ms) for the planner, fitted on the estimates at uniform
        widths like a measured table (cheap: no export, so nothing is cached), scaled to the
        model's estimate `now_ms` (which removes the fit's error at full width)."""
        rows = []
        for kept in _uniform_configs(ana):
            pruned = prune_copy(model, example, ana, {int(k): v for k, v in kept.items()})
            layers, total = self._estimate(pruned, example)
            frac = {int(g): k / ana.groups[int(g)].size for g, k in kept.items()}
            named = [(n, ms, n if kind in LAYER_KINDS else None) for n, kind, ms in layers]
            rows.append(({"total_ms": total}, grouped(named, ana, frac)))
        how = "estimated per layer by the device model at uniform widths; fitted per layer"
        self.table = scaled(_fit(rows, str(self), how), now_ms)
        log(f"[prune] latency table for {self.device} from the device model (estimated)")
        return planner_terms(self.table, ana)
