"""`estimate_for_devices`: latency and energy of a model on a list of device profiles, as
report figures."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.estimate.count import count_layers
from pipeline.estimate.energy import estimate_energy
from pipeline.estimate.hostfit import HostFit, estimator_error, fit_caveat, load_host_fit
from pipeline.estimate.machine import Machine
from pipeline.estimate.roofline import estimate_latency


def estimate_for_devices(
    model: nn.Module,
    example: torch.Tensor,
    precision: str,
    devices: list[str],
    threads: int | list[int] = 1,
    cal: HostFit | None = None,
) -> dict:
    """{device: {"threads": {T: latency block}, "energy": ..., "estimator_error": ...}}.

    Every latency, energy and error is a figure; latency is `estimated`, the error beside it
    `measured` (on this host, held-out zoo models). The counts of compute- and memory-bound
    layers are plain ints here; report.json gives them as estimated figures
    (pipeline/report_figures.py). A device without a public DRAM bandwidth gets
    memory_term: "missing" and the reason. `cal`: the host fit (default: the stored one).
    """
    from targets.devices import get_device

    fit = cal or load_host_fit()
    layers = count_layers(model, example, precision)
    err = estimator_error(fit, precision)
    caveat = fit_caveat(fit)
    out = {}
    for key in devices:
        dev = get_device(key)
        m = Machine.of(dev)
        per_t = {}
        for t in [threads] if isinstance(threads, int) else threads:
            per_t[str(t)] = estimate_latency(layers, m, precision, t, fit)
        out[key] = {
            "name": dev.name,
            "core": dev.core,
            "precision": precision,
            "latency": per_t,
            **estimate_energy(layers, dev, precision),
            "estimator_error": err,
            "caveat": caveat,
        }
    return out
