"""The device model's factors (device_model.py), fitted on published on-device latencies by
benchmarks/device_validation.py into targets/device_calibration.json, with the error each
device's estimates were validated with (held out: leave-one-model-out)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

DEVICE_FIT_PATH = Path(__file__).resolve().parents[2] / "targets" / "device_calibration.json"
# the runtime a report's device estimates are made for: ExecuTorch's XNNPACK delegate, and
# LiteRT's default CPU delegate, both run XNNPACK's kernels
RUNTIME = "xnnpack"


@dataclass(frozen=True)
class DeviceFit:
    """eff[p][class]: the fraction of the cores' peak MAC rate a conv / dwconv / gemm layer
        reaches at precision p (shared by the runtimes);
    elem_bytes_per_cycle: activation bytes an elementwise / pooling / data-movement layer
        streams per cycle of each core;
    transcendental_cycles: cycles per element of SiLU / sigmoid / GELU / softmax, on top;
    bw_eff: the fraction of the profile's DRAM bandwidth the memory term assumes;
    runtimes[name]: the runtime's own costs: speed[p] (a multiplier on its MAC rate),
        layer_kcycles (per operator) and call_kcycles (per inference), in thousands of cycles of
        the device's first core, parallel_eff (what each core beyond the first adds) and split
        ("dynamic": threads take work as they free up; "static": equal shares, so the slowest
        core sets the pace);
    device_factor[key]: a multiplier per device profile, fitted on that device's published
        rows (1 for a device without rows);
    validation: the held-out error, overall and per device (benchmarks/device_validation.py)."""

    eff: dict
    elem_bytes_per_cycle: float
    transcendental_cycles: float
    bw_eff: float
    runtimes: dict
    device_factor: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    _FIELDS = (
        "eff",
        "elem_bytes_per_cycle",
        "transcendental_cycles",
        "bw_eff",
        "runtimes",
        "device_factor",
    )

    @classmethod
    def from_dict(cls, d: dict) -> DeviceFit:
        return cls(
            **{k: d[k] for k in cls._FIELDS if k in d},
            validation=d.get("validation", {}),
            meta=d.get("meta", {}),
        )

    def to_dict(self) -> dict:
        return {
            "schema": 1,
            **{k: getattr(self, k) for k in self._FIELDS},
            "validation": self.validation,
            "meta": self.meta,
        }


class DeviceFitMissing(RuntimeError):
    pass


@cache
def load_device_fit(path: str | Path | None = None) -> DeviceFit:
    """The device fit (targets/device_calibration.json, written by
    benchmarks/device_validation.py)."""
    p = Path(path) if path is not None else DEVICE_FIT_PATH
    if not p.exists():
        raise DeviceFitMissing(
            f"{p} is missing: run `python benchmarks/device_validation.py` to fit the device "
            "estimator on the published latencies"
        )
    return DeviceFit.from_dict(json.loads(p.read_text()))


def device_error(fit: DeviceFit, key: str) -> dict | None:
    """The held-out error of device `key`'s published rows, or None when it has none."""
    return fit.validation.get("by_device", {}).get(key)


def _first_core(device) -> tuple[float, float]:
    return device.peak_fp32_gmac_s.value, device.clock_ghz.value


def nearest_validated(fit: DeviceFit, device, profiles: dict) -> str | None:
    """The validated device closest to `device` by its first core: |ln| of the ratio of their
    per-core fp32 peaks plus that of their clocks (a like core at a like clock)."""
    peak, clock = _first_core(device)
    best, best_d = None, math.inf
    for key in sorted(fit.validation.get("by_device", {})):
        if key not in profiles or key == device.key:
            continue
        p2, c2 = _first_core(profiles[key])
        d = abs(math.log(peak / p2)) + abs(math.log(clock / c2))
        if d < best_d:
            best, best_d = key, d
    return best
