"""The estimator's efficiency factors fitted on a host (benchmarks/estimator.py writes them to
targets/host_calibration.json), the error they were validated with, and which CPU they fit."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from pipeline.report import fig

HOST_FIT_PATH = Path(__file__).resolve().parents[2] / "targets" / "host_calibration.json"


@dataclass(frozen=True)
class HostFit:
    """Efficiency factors fitted on this host (benchmarks/estimator.py), per precision `p`.

    eff[p][class]: the fraction of the per-core peak MAC rate a large layer of the class
        reaches (class: conv, dwconv, linear, other; "other" counts an elementwise op as a MAC);
    shape_m0 / shape_n0 / shape_k0[p]: a conv/linear layer's efficiency is
        eff[class] x M/(M + m0) x N/(N + n0) x K/(K + k0), M, N, K its GEMM dimensions
        (output pixels or tokens, output channels, MACs per output): small GEMMs use the
        kernels' register tiles poorly;
    bw_eff[p]: fraction of the DRAM bandwidth the memory term assumes (<= 1);
    overhead_ms[p]: fixed time per layer that runs, at the host's clock;
    sync_ms[p]: extra time per layer when more than one thread runs (threadpool dispatch);
    portable_ms[p]: extra time per `portable` layer (the delegate is split around it);
    call_overhead_ms[p]: fixed time per inference (runtime entry, layout/convert ops at the
        delegate boundary, the Python runner), at the host's clock;
    parallel_eff[p]: each core beyond the first adds this fraction of a core to the layers
        XNNPACK runs (PARALLEL_CLASSES: it splits their work over its threads);
    parallel_eff_portable[p]: the same for `portable` layers (ExecuTorch's portable kernels,
        outside the delegate); a fit without it uses parallel_eff.
    """

    eff: dict
    bw_eff: dict
    overhead_ms: dict
    call_overhead_ms: dict
    parallel_eff: dict
    host_clock_ghz: float
    shape_m0: dict = field(default_factory=lambda: {"fp32": 0.0, "int8": 0.0})
    shape_n0: dict = field(default_factory=lambda: {"fp32": 0.0, "int8": 0.0})
    shape_k0: dict = field(default_factory=lambda: {"fp32": 0.0, "int8": 0.0})
    sync_ms: dict = field(default_factory=lambda: {"fp32": 0.0, "int8": 0.0})
    portable_ms: dict = field(default_factory=lambda: {"fp32": 0.0, "int8": 0.0})
    parallel_eff_portable: dict | None = None
    meta: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)

    _FIELDS = (
        "eff",
        "bw_eff",
        "overhead_ms",
        "call_overhead_ms",
        "parallel_eff",
        "shape_m0",
        "shape_n0",
        "shape_k0",
        "sync_ms",
        "portable_ms",
        "parallel_eff_portable",
    )

    @classmethod
    def from_dict(cls, d: dict) -> HostFit:
        kw = {k: d[k] for k in cls._FIELDS if k in d}
        return cls(
            host_clock_ghz=float(d["host_clock_ghz"]),
            meta=d.get("meta", {}),
            validation=d.get("validation", {}),
            **kw,
        )

    def to_dict(self) -> dict:
        return {
            **{k: getattr(self, k) for k in self._FIELDS},
            "host_clock_ghz": self.host_clock_ghz,
            "meta": self.meta,
            "validation": self.validation,
        }


class HostFitMissing(RuntimeError):
    pass


@cache
def load_host_fit(path: str | Path | None = None) -> HostFit:
    """The host fit (targets/host_calibration.json, written by benchmarks/estimator.py)."""
    p = Path(path) if path is not None else HOST_FIT_PATH
    if not p.exists():
        raise HostFitMissing(
            f"{p} is missing: run `python benchmarks/estimator.py` to fit the estimator on this host"
        )
    return HostFit.from_dict(json.loads(p.read_text()))


def estimator_error(fit: HostFit | None = None, precision: str | None = None) -> dict | None:
    """The estimator's measured leave-one-model-out error on this host, as figures."""
    fit = fit or load_host_fit()
    v = fit.validation
    if not v:
        return None
    s = v.get("by_precision", {}).get(precision) if precision else None
    s = s or v["all"]
    on = f"{v['on']}; {s['cases']} held-out (model, precision, threads) cases" + (
        f", {precision} only" if precision and v.get("by_precision", {}).get(precision) else ""
    )
    return {
        "median_abs_error": fig(s["median_abs_error"], "fraction", "measured", on),
        "p90_abs_error": fig(s["p90_abs_error"], "fraction", "measured", on),
        "within_15pct": fig(s["within_15pct"], "fraction", "measured", on),
    }


@cache
def this_cpu() -> str:
    """This machine's CPU model name (/proc/cpuinfo on Linux, else platform.processor())."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fitted_elsewhere(fit: HostFit) -> str | None:
    """The CPU the fit was made on, where it is not this machine's; else None."""
    fitted = fit.meta.get("host_cpu")
    return fitted if fitted and fitted != this_cpu() else None


def fit_caveat(fit: HostFit) -> str:
    """What a device estimate made with `fit` carries over from the machine it was fitted on."""
    elsewhere = fitted_elsewhere(fit)
    if elsewhere:
        return (
            f"efficiency factors were fitted for XNNPACK on another machine ({elsewhere}), "
            f"not this one ({this_cpu()}), and applied to the device's Arm peak figures; "
            "the error beside the estimate is that machine's, not the device's "
            "(`python benchmarks/estimator.py` refits on this machine)"
        )
    return (
        "efficiency factors were fitted for XNNPACK on this host's x86 cores and applied "
        "to the device's Arm peak figures; the error beside the estimate is this host's, "
        "not the device's"
    )
