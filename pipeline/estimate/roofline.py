"""Latency by per-layer roofline: time = max(MACs / (peak x efficiency[op class]),
bytes / (DRAM bandwidth x bw efficiency)) + a fixed per-layer overhead, summed, with the
efficiencies of the host fit (hostfit.py)."""

from __future__ import annotations

from pipeline.estimate.count import Layer
from pipeline.estimate.hostfit import HostFit, load_host_fit
from pipeline.estimate.machine import Machine, dram_bytes, weights_resident
from pipeline.report import fig

# efficiency classes: one fitted factor each (per precision)
EFF_CLASSES = ("conv", "dwconv", "linear", "other", "portable")
# XNNPACK splits these over its threads; "portable" kernels run on one
PARALLEL_CLASSES = ("conv", "dwconv", "linear", "other")
# "linear" is every GEMM: nn.Linear, matmul/bmm, and 1x1 stride-1 convs ("pwconv"), which the
# XNNPACK delegate runs as "Fully Connected" operators (seen in ETDump)
# "portable": a layer norm / group norm, which this XNNPACK partitioner leaves to ExecuTorch's
# portable kernels (ETDump shows `native_call_native_layer_norm.out`), splitting the delegate
KIND_CLASS = {
    "conv": "conv",
    "dwconv": "dwconv",
    "pwconv": "linear",
    "linear": "linear",
    "pool": "other",
    "add": "other",
    "move": "other",  # the host fit has no class of its own for data movement
    "other": "other",
    "portable": "portable",
}


def effective_cores(machine: Machine, threads: int, parallel_eff: float) -> float:
    """1 + (min(threads, cores) - 1) x parallel efficiency."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return 1.0 + (min(threads, machine.cores) - 1) * parallel_eff


def shape_factor(layer: Layer, precision: str, fit: HostFit) -> float:
    """M/(M + m0) x N/(N + n0) x K/(K + k0) for conv/linear layers, 1 for the others."""
    if not layer.gemm_m:
        return 1.0
    f = 1.0
    for v, c in (
        (layer.gemm_m, fit.shape_m0),
        (layer.gemm_n, fit.shape_n0),
        (layer.gemm_k, fit.shape_k0),
    ):
        x0 = c.get(precision, 0.0)
        f *= v / (v + x0)
    return f


def layer_times(
    layers: list[Layer], machine: Machine, precision: str, threads: int, fit: HostFit
) -> list[dict]:
    """Per-layer roofline: compute and memory time (ms), the larger, and the overhead.

    compute = (MACs + ops) / (peak_per_core x effective cores x eff[class] x shape factor),
              effective cores from parallel_eff (PARALLEL_CLASSES) or parallel_eff_portable;
    memory  = dram_bytes / (bandwidth x bw_eff)  (None when the machine has no bandwidth;
              no weight bytes when all weights fit the machine's last-level cache);
    overhead = (overhead_ms [+ sync_ms if threads > 1] [+ portable_ms for a portable layer])
               x host clock / machine clock.
    """
    cores = effective_cores(machine, threads, fit.parallel_eff[precision])
    portable_cores = effective_cores(
        machine, threads, (fit.parallel_eff_portable or fit.parallel_eff)[precision]
    )
    peak = machine.peak_gmac_s[precision] * 1e9
    per = fit.overhead_ms[precision] + (
        fit.sync_ms[precision] if min(threads, machine.cores) > 1 else 0.0
    )
    over = per * fit.host_clock_ghz / machine.clock_ghz
    cached = weights_resident(layers, machine)
    out = []
    for l in layers:
        if l.kind == "fused":
            continue
        cls = KIND_CLASS[l.kind]
        effs = fit.eff[precision]
        # a fit from before the portable class charges those layers as `other`
        eff = effs.get(cls, effs["other"]) * shape_factor(l, precision, fit)
        extra = (
            fit.portable_ms[precision] * fit.host_clock_ghz / machine.clock_ghz
            if cls == "portable"
            else 0.0
        )
        n = cores if cls in PARALLEL_CLASSES else portable_cores
        compute = (l.macs + l.ops) / (peak * n * eff) * 1e3
        memory = (
            None
            if machine.bw_gb_s is None
            else dram_bytes(l, machine, cached)
            / (machine.bw_gb_s * 1e9 * fit.bw_eff[precision])
            * 1e3
        )
        t = compute if memory is None else max(compute, memory)
        out.append(
            {
                "name": l.name,
                "kind": l.kind,
                "class": cls,
                "compute_ms": compute,
                "memory_ms": memory,
                "overhead_ms": over + extra,
                "ms": t + over + extra,
                "bound": "compute" if memory is None or compute >= memory else "memory",
            }
        )
    return out


def call_overhead_ms(machine: Machine, precision: str, fit: HostFit) -> float:
    return fit.call_overhead_ms[precision] * fit.host_clock_ghz / machine.clock_ghz


def roofline_ms(
    layers: list[Layer], machine: Machine, precision: str, threads: int, fit: HostFit
) -> float:
    """Estimated latency (ms): the per-layer roofline summed, plus the per-inference overhead."""
    rows = layer_times(layers, machine, precision, threads, fit)
    return sum(r["ms"] for r in rows) + call_overhead_ms(machine, precision, fit)


def estimate_latency(
    layers: list[Layer],
    machine: Machine,
    precision: str,
    threads: int,
    fit: HostFit | None = None,
) -> dict:
    """Estimated latency (ms) as a figure, with the split into compute- and memory-bound time."""
    fit = fit or load_host_fit()
    rows = layer_times(layers, machine, precision, threads, fit)
    call = call_overhead_ms(machine, precision, fit)
    total = sum(r["ms"] for r in rows) + call
    used = min(threads, machine.cores)
    on = (
        f"{machine.name}, {precision}, {threads} thread(s) -> {used} core(s), per-layer "
        f"roofline with efficiencies fitted on {fit.meta.get('host_cpu', 'this host')}"
    )
    out = {
        "latency": fig(total, "ms", "estimated", on),
        "compute_bound_layers": sum(r["bound"] == "compute" for r in rows),
        "memory_bound_layers": sum(r["bound"] == "memory" for r in rows),
        "compute_bound_ms": fig(
            sum(r["ms"] - r["overhead_ms"] for r in rows if r["bound"] == "compute"),
            "ms",
            "estimated",
            on,
        ),
        "memory_bound_ms": fig(
            sum(r["ms"] - r["overhead_ms"] for r in rows if r["bound"] == "memory"),
            "ms",
            "estimated",
            on,
        ),
        "overhead": fig(
            sum(r["overhead_ms"] for r in rows) + call,
            "ms",
            "estimated",
            on + ": fixed per-layer and per-inference costs, scaled by clock",
        ),
        "memory_term": "included",
    }
    if machine.bw_gb_s is None:
        out["memory_term"] = "missing"
        out["memory_term_missing"] = (
            f"no DRAM bandwidth for {machine.name}: {machine.bw_missing_reason}. The estimate "
            "has the compute term and overhead only, so it is a lower bound for memory-bound "
            "layers"
        )
        out["latency"]["on"] += "; memory term missing (no public DRAM bandwidth)"
    elif machine.cache_bytes is None:
        out["cache_note"] = (
            f"no public L2 size for {machine.name}: every layer's activations "
            "are counted as DRAM traffic (pessimistic for small models)"
        )
    return out
