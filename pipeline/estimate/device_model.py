"""Latency on a device profile (issue 28): the model that the published on-device latencies
(targets/published_latency.yaml, benchmarks/device_validation.py) are fitted and validated on.

Per layer that runs (a BatchNorm / ReLU folded into its conv costs nothing, as in XNNPACK):

    compute     = work / (rate(T) x eff[precision][class] x speed[runtime][precision])
                  for conv, depthwise conv and GEMM layers (1x1 convs, linear, matmul, attention)
    elementwise = activation bytes in + out / (clock(T) x bytes per cycle)
                  [+ elements x cycles per element / clock(T) for SiLU, sigmoid, GELU, softmax]
                  for the memory-bound rest: pooling, adds, activations, norms, and data movement
                  (concatenate, channel shuffle, pad), which has no arithmetic but still costs
    memory      = DRAM bytes / (DRAM bandwidth x bw_eff)
    time        = max(compute or elementwise, memory) + layer_kcycles / clock of the first core

    latency = device factor x (sum over layers + call_kcycles / clock of the first core)

rate(T) and clock(T): T threads run on the profile's fastest cores first, then on its other
clusters in order (`placement`); the first core counts whole, each other one by the runtime's
parallel efficiency (a runtime that splits work in equal shares runs at the slowest core's rate). The per-layer and per-call costs are the runtime's own (XNNPACK's operator
dispatch, its entry and exit), fitted on the published table in cycles of the device's clock:
nothing of this host, and none of its Python runner, enters a device estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.estimate.count import Layer
from pipeline.estimate.machine import Machine, dram_bytes

PRECISIONS = ("fp32", "int8")
MAC_CLASSES = ("conv", "dwconv", "gemm")
# "transcendental": an elementwise layer whose op needs exp / tanh / erf per element (SiLU,
# sigmoid, GELU, softmax): it costs cycles per element on top of streaming its bytes
DEVICE_CLASSES = (*MAC_CLASSES, "elementwise", "transcendental")
TRANSCENDENTAL_OPS = (
    "silu",
    "sigmoid",
    "gelu",
    "tanh",
    "exp",
    "softmax",
    "_softmax",
    "log_softmax",
    "_log_softmax",
    "erf",
    "mish",
    "elu",
)
KIND_DEVICE_CLASS = {
    "conv": "conv",
    "dwconv": "dwconv",
    "pwconv": "gemm",
    "linear": "gemm",
    "pool": "elementwise",
    "add": "elementwise",
    "other": "elementwise",
    "move": "elementwise",
    "portable": "elementwise",
}


@dataclass(frozen=True)
class Placement:
    """Where T threads run on a device: the fastest core, and the sums over the others used."""

    threads: int
    used: int
    first_gmac: dict  # precision -> peak GMAC/s of the first core
    rest_gmac: dict  # precision -> summed peak GMAC/s of the other cores used
    first_ghz: float
    rest_ghz: float
    slowest_gmac: dict  # precision -> peak GMAC/s of the slowest core used
    slowest_ghz: float
    cores: str  # "1x Cortex-X3 @ 2.91 GHz + 3x Cortex-A715 @ 2.37 GHz"


def _clusters(device) -> list[tuple[int, str, float, dict]]:
    """(count, core name, clock GHz, per-core peak GMAC/s by precision), fastest first."""
    own = (
        int(device.cores.value),
        device.core,
        device.clock_ghz.value,
        {"fp32": device.peak_fp32_gmac_s.value, "int8": device.peak_int8_gmac_s.value},
    )
    others = [
        (c.count, c.core.name, c.clock_ghz.value, {p: c.peak_gmac_s(p) for p in PRECISIONS})
        for c in device.other_clusters
    ]
    return [own, *others]


def placement(device, threads: int) -> Placement:
    """T threads on the device's cores: the profiled (fastest) cluster first, then the others
    in the order devices.yaml lists them; more threads than cores use every core once."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    left, parts, cores = threads, [], []
    for count, name, ghz, peak in _clusters(device):
        n = min(left, count)
        if n:
            parts.append((n, ghz, peak))
            cores.append(f"{n}x {name} @ {ghz:g} GHz")
        left -= n
    first_ghz, first_peak = parts[0][1], parts[0][2]
    rest = [(parts[0][0] - 1, *parts[0][1:]), *parts[1:]]
    return Placement(
        threads=threads,
        used=sum(n for n, _, _ in parts),
        first_gmac=dict(first_peak),
        rest_gmac={p: sum(n * pk[p] for n, _, pk in rest) for p in PRECISIONS},
        first_ghz=first_ghz,
        rest_ghz=sum(n * ghz for n, ghz, _ in rest),
        slowest_gmac=dict(parts[-1][2]),
        slowest_ghz=parts[-1][1],
        cores=" + ".join(cores),
    )


def app_threads(device) -> int:
    """The thread count an app's runtime picks by default: the cores outside the slowest
    cluster (ExecuTorch and XNNPACK size their thread pool to the performance cores), or every
    core of a device with one cluster."""
    clusters = _clusters(device)
    if len(clusters) == 1:
        return clusters[0][0]
    return sum(c[0] for c in clusters[:-1])


@dataclass
class Cases:
    """Cases (a model's layers on a device, runtime, precision and thread count) as flat arrays:
    per layer (`seg` its case) and per case. One case for a report's estimate; every published
    row at once for the fit."""

    seg: np.ndarray  # layer -> case index
    cls: np.ndarray  # layer: index into DEVICE_CLASSES
    work: np.ndarray  # layer: MACs + other ops
    act: np.ndarray  # layer: activation bytes in + out
    dram: np.ndarray  # layer: bytes from DRAM
    prec: np.ndarray  # case: index into PRECISIONS
    runtime: list  # case: runtime name
    device: list  # case: device key
    first_gmac: np.ndarray  # case
    rest_gmac: np.ndarray
    first_ghz: np.ndarray
    rest_ghz: np.ndarray
    used: np.ndarray  # case: cores used
    slowest_gmac: np.ndarray
    slowest_ghz: np.ndarray
    bw_gb_s: np.ndarray  # case: DRAM bandwidth, nan where the profile has none

    @property
    def n(self) -> int:
        return len(self.runtime)


def device_class(layer: Layer) -> str:
    cls = KIND_DEVICE_CLASS[layer.kind]
    if cls == "elementwise" and any(op.rstrip("_") in TRANSCENDENTAL_OPS for op in layer.ops_seen):
        return "transcendental"
    return cls


def case_layers(layers: list[Layer], device) -> dict:
    """The per-layer arrays of one model on one device (layers that run only)."""
    m = Machine.of(device)
    run = [lay for lay in layers if lay.kind != "fused"]
    return {
        "cls": np.array([DEVICE_CLASSES.index(device_class(x)) for x in run], int),
        "work": np.array([x.macs + x.ops for x in run], float),
        "act": np.array([x.act_in_bytes + x.act_out_bytes for x in run], float),
        "dram": np.array([dram_bytes(x, m) for x in run], float),
    }


def stack(items: list[tuple[dict, object, str, str, int]]) -> Cases:
    """Cases from [(case_layers(...), device, runtime, precision, threads)]."""
    place = [placement(dev, t) for _, dev, _, _, t in items]
    prec = [p for *_, p, _ in items]
    bw = [dev.dram_bandwidth_gb_s.value for _, dev, *_ in items]
    return Cases(
        seg=np.concatenate([np.full(len(a["cls"]), i) for i, (a, *_) in enumerate(items)]),
        cls=np.concatenate([a["cls"] for a, *_ in items]),
        work=np.concatenate([a["work"] for a, *_ in items]),
        act=np.concatenate([a["act"] for a, *_ in items]),
        dram=np.concatenate([a["dram"] for a, *_ in items]),
        prec=np.array([PRECISIONS.index(p) for p in prec]),
        runtime=[r for _, _, r, _, _ in items],
        device=[dev.key for _, dev, *_ in items],
        first_gmac=np.array([pl.first_gmac[p] for pl, p in zip(place, prec)]),
        rest_gmac=np.array([pl.rest_gmac[p] for pl, p in zip(place, prec)]),
        first_ghz=np.array([pl.first_ghz for pl in place]),
        rest_ghz=np.array([pl.rest_ghz for pl in place]),
        used=np.array([pl.used for pl in place], float),
        slowest_gmac=np.array([pl.slowest_gmac[p] for pl, p in zip(place, prec)]),
        slowest_ghz=np.array([pl.slowest_ghz for pl in place]),
        bw_gb_s=np.array([np.nan if b is None else b for b in bw], float),
    )


def _rates(cases: Cases, rt: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Per case: MAC/s and cycles/s of the cores used. A runtime that hands its threads equal
    shares ("static": ncnn's OpenMP loops) waits for the slowest core; one whose threads take
    work as they free up ("dynamic": XNNPACK's pthreadpool) gets each core's own rate."""
    par = np.array([r["parallel_eff"] for r in rt])
    static = np.array([r.get("split") == "static" for r in rt])
    gmac = np.where(
        static,
        cases.slowest_gmac * (1 + (cases.used - 1) * par),
        cases.first_gmac + par * cases.rest_gmac,
    )
    ghz = np.where(
        static,
        cases.slowest_ghz * (1 + (cases.used - 1) * par),
        cases.first_ghz + par * cases.rest_ghz,
    )
    return gmac * 1e9, ghz * 1e9


def terms(cases: Cases, fit) -> dict:
    """Per layer: compute_ms (MAC layers) or elementwise time, memory_ms, overhead_ms; per
    case: call_ms, factor. `fit` is a DeviceFit (device_fit.py)."""
    rt = [fit.runtimes[r] for r in cases.runtime]
    speed = np.array([r["speed"][PRECISIONS[p]] for r, p in zip(rt, cases.prec)])
    layer_k = np.array([r["layer_kcycles"] for r in rt])
    call_k = np.array([r["call_kcycles"] for r in rt])
    rate, clock = _rates(cases, rt)
    eff = np.array([[fit.eff[p][c] for c in MAC_CLASSES] for p in PRECISIONS])
    s, n_mac = cases.seg, len(MAC_CLASSES)
    is_mac = cases.cls < n_mac
    macs = cases.work / (rate[s] * speed[s] * eff[cases.prec[s], np.minimum(cases.cls, n_mac - 1)])
    stream = cases.act / (clock[s] * fit.elem_bytes_per_cycle)
    transc = np.where(
        cases.cls == DEVICE_CLASSES.index("transcendental"),
        cases.work * fit.transcendental_cycles / clock[s],
        0.0,
    )
    bw = np.nan_to_num(cases.bw_gb_s, nan=np.inf)[s]
    return {
        "compute_ms": np.where(is_mac, macs, stream + transc) * 1e3,
        "memory_ms": cases.dram / (bw * 1e9 * fit.bw_eff) * 1e3,
        "overhead_ms": layer_k[s] / cases.first_ghz[s] * 1e-3,  # kcycles / GHz = us
        "call_ms": call_k / cases.first_ghz * 1e-3,
        "factor": np.array([fit.device_factor.get(d, 1.0) for d in cases.device]),
    }


def case_ms(cases: Cases, fit, t: dict | None = None) -> np.ndarray:
    """Estimated latency (ms) of every case."""
    t = t or terms(cases, fit)
    per_layer = np.maximum(t["compute_ms"], t["memory_ms"]) + t["overhead_ms"]
    summed = np.bincount(cases.seg, weights=per_layer, minlength=cases.n)
    return t["factor"] * (summed + t["call_ms"])
