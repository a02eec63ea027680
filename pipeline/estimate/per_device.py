"""`estimate_for_devices`: latency and energy of a model on a list of device profiles, as
report figures. Every latency comes with a range and the error it was validated with on
published on-device measurements (device_fit.py), or says `unvalidated`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.estimate import device_model as D
from pipeline.estimate.count import Layer, count_layers
from pipeline.estimate.device_fit import (
    RUNTIME,
    DeviceFit,
    device_error,
    load_device_fit,
    nearest_validated,
)
from pipeline.estimate.energy import estimate_energy
from pipeline.report import counted, estimated, fig


def two_digits(x: float) -> float:
    """`x` rounded to 2 significant digits: what a roofline-class estimate can claim."""
    return float(f"{x:.2g}")


def estimate_for_devices(
    model: nn.Module,
    example: torch.Tensor,
    precision: str,
    devices: list[str],
    threads: int | list[int] | None = None,
    fit: DeviceFit | None = None,
    runtime: str = RUNTIME,
) -> dict:
    """{device: {"latency": {T: block}, "energy": ..., "validation": ...}}.

    threads: a count, a list of counts, or None for 1 and the count an app's runtime picks
    (the cores outside the slowest cluster: device_model.app_threads). Each latency block has
    the value (2 significant digits), its range (p10-p90 of the validated error applied), the
    validated error and the number of published rows it rests on, or `unvalidated` and the
    error of the nearest validated device. `fit`: the device fit (default: the stored one).
    """
    from targets.devices import get_device, list_devices

    fit = fit or load_device_fit()
    layers = count_layers(model, example, precision)
    profiles = {k: get_device(k) for k in list_devices()}
    out = {}
    for key in devices:
        dev = get_device(key)
        val = validation(fit, dev, profiles)
        counts = [threads] if isinstance(threads, int) else threads
        counts = counts or sorted({1, D.app_threads(dev)})
        out[key] = {
            "name": dev.name,
            "core": dev.core,
            "precision": precision,
            "runtime": runtime,
            "latency": {
                str(t): latency_block(layers, dev, precision, t, fit, runtime, val) for t in counts
            },
            **estimate_energy(layers, dev, precision),
            "validation": val,
            "caveat": caveat(fit, runtime),
        }
    return out


def validation(fit: DeviceFit, dev, profiles: dict) -> dict:
    """The held-out error of the device's published rows as figures; for a device without
    rows, `unvalidated` and the error of the nearest validated device."""
    own = device_error(fit, dev.key)
    near = None if own else nearest_validated(fit, dev, profiles)
    stats = own or (device_error(fit, near) if near else None)
    base = fit.validation.get("on", "published on-device latencies")
    if stats is None:
        return {"state": "unvalidated", "rests_on": None, "note": "no validated device"}
    who = dev.key if own else near
    on = (
        f"{who}: {stats['rows']} published latencies ({', '.join(stats.get('runtimes', []))}), "
        f"each estimated held out; {base}"
    )
    out = {
        "state": "validated" if own else "unvalidated",
        "rests_on": who,
        "rows": counted(stats["rows"], "published latencies", on),
        **{
            k: fig(stats[k], "fraction (estimate / published - 1)", "measured", on)
            for k in ("median_abs_error", "p10_error", "p90_error", "within_25pct")
        },
    }
    if not own:
        out["note"] = (
            f"no published latencies for {dev.key}: the error shown is that of the nearest "
            f"validated device, {near} (closest first core: peak x clock), and the estimate "
            "carries no device factor of its own; its range applies the error of devices "
            "estimated without their own rows (new_device)"
        )
        out.update(_new_device(fit))
    return out


def _new_device(fit: DeviceFit) -> dict:
    """The leave-one-device-out error: how estimates for a device without rows fared."""
    nd = fit.validation.get("new_device")
    if not nd:
        return {}
    on = f"{nd['rows']} published latencies, each estimated by a fit without its device's rows"
    return {
        "new_device": {
            k: fig(nd[k], "fraction (estimate / published - 1)", "measured", on)
            for k in ("median_abs_error", "p10_error", "p90_error", "within_25pct")
            if k in nd
        }
    }


def _range(value: float, val: dict) -> list[float] | None:
    """[low, high] ms: the value divided by 1 + the p90 and 1 + the p10 of the signed error
    (of the device's own rows; for an unvalidated device, of devices estimated without theirs)."""
    err = val.get("new_device") or val
    if "p10_error" not in err:
        return None
    lo_err, hi_err = err["p10_error"]["value"], err["p90_error"]["value"]
    return [two_digits(value / max(1 + hi_err, 0.05)), two_digits(value / max(1 + lo_err, 0.05))]


def latency_block(
    layers: list[Layer], dev, precision: str, threads: int, fit: DeviceFit, runtime: str, val
) -> dict:
    """One device and thread count: the estimate, its range and parts, as figures."""
    cases = D.stack([(D.case_layers(layers, dev), dev, runtime, precision, threads)])
    t = D.terms(cases, fit)
    total = float(D.case_ms(cases, fit, t)[0])
    place = D.placement(dev, threads)
    state = _state_words(dev.key, val)
    on = (
        f"{dev.key}, {precision}, {threads} thread(s) on {place.cores}, {runtime} kernels: "
        f"per-layer model fitted on published on-device latencies ({state})"
    )
    compute_bound = t["compute_ms"] >= t["memory_ms"]
    work = np.maximum(t["compute_ms"], t["memory_ms"]) * t["factor"][0]
    rng = _range(total, val)
    call_k = fit.runtimes[runtime]["call_kcycles"]
    return {
        "settings": {"threads": threads},
        "cores": place.cores,
        "latency": estimated(two_digits(total), "ms", on),
        "range": estimated(
            rng,
            "ms",
            on
            + "; p10-p90 of the held-out error applied"
            + (" (devices estimated without their own rows)" if "new_device" in val else ""),
        )
        if rng
        else None,
        "validation": val["state"],
        "validated_error": val.get("median_abs_error"),
        "validated_rows": val.get("rows"),
        "compute_bound_layers": int(compute_bound.sum()),
        "memory_bound_layers": int((~compute_bound).sum()),
        "compute_bound_ms": estimated(float(work[compute_bound].sum()), "ms", on),
        "memory_bound_ms": estimated(float(work[~compute_bound].sum()), "ms", on),
        "overhead": estimated(
            float(t["overhead_ms"].sum() * t["factor"][0]),
            "ms",
            on + f": {runtime}'s own per-operator cost, in cycles of the device",
        ),
        "per_call": estimated(
            float(t["call_ms"][0] * t["factor"][0]),
            "ms",
            f"{runtime}'s own per-call cost, {call_k:.3g} kcycles fitted on published "
            f"on-device latencies, at {dev.key}'s {place.first_ghz:g} GHz: no time of this "
            "host or its Python runner",
        ),
        "memory_term": f"included ({dev.dram_bandwidth_gb_s.basis} DRAM bandwidth)",
    }


def _state_words(key: str, val: dict) -> str:
    """Whose published rows the estimate's error rests on, in a few words."""
    if "rows" not in val:
        return "unvalidated"
    n = val["rows"]["value"]
    if val["state"] == "validated":
        return f"validated on {n} published rows of {key}"
    return f"unvalidated; the nearest validated device, {val['rests_on']}, has {n} rows"


def caveat(fit: DeviceFit, runtime: str) -> str:
    a = fit.validation.get("all", {})
    return (
        f"the {runtime} model's factors were fitted on published CPU latencies of phones and "
        f"boards (targets/published_latency.yaml; {a.get('within_25pct_rows', '?')} of "
        f"{a.get('rows', '?')} held-out rows within 25 %), not on this host; the error beside "
        "an estimate is the held-out error of its device's rows, or of the nearest validated "
        "device where it has none"
    )
