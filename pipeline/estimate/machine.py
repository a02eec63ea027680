"""The figures of a machine the estimates need (from a device profile, or the host), and which
bytes of a layer reach its DRAM."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.estimate.count import Layer


@dataclass(frozen=True)
class Machine:
    """The figures the roofline needs. From a DeviceProfile via `Machine.of`, or built by hand
    (the host, tests). bw_gb_s None = no public DRAM bandwidth: the memory term is missing.
    cache_bytes: the cache a layer's activations must fit in to stay on chip (the L2 of the
    profile); None = not public, and then activations are counted as DRAM traffic.
    llc_bytes: the last-level cache that keeps a model's weights between inferences when all of
    them fit (the host's L3, read from sysfs); None = not known (the device profiles), and then
    the weights are read from DRAM at every inference."""

    name: str
    clock_ghz: float
    cores: int
    peak_gmac_s: dict  # precision -> per-core peak GMAC/s
    bw_gb_s: float | None
    bw_missing_reason: str = ""
    cache_bytes: int | None = None
    llc_bytes: int | None = None

    @classmethod
    def of(cls, device) -> Machine:
        bw, l2 = device.dram_bandwidth_gb_s, device.l2_kib
        return cls(
            device.key,
            device.clock_ghz.value,
            int(device.cores.value),
            {"fp32": device.peak_fp32_gmac_s.value, "int8": device.peak_int8_gmac_s.value},
            bw.value,
            ""
            if bw.known
            else f"dram_bandwidth_gb_s is null ({bw.basis}): {bw.source.rstrip('.')}",
            int(l2.value * 1024) if l2.known else None,
        )


def weights_resident(layers: list[Layer], machine: Machine) -> bool:
    """True when all of the model's weights fit in the machine's last-level cache, so that
    back-to-back inferences read them from there rather than from DRAM."""
    return (
        machine.llc_bytes is not None
        and sum(l.weight_bytes for l in layers if l.kind != "fused") <= machine.llc_bytes
    )


def dram_bytes(layer: Layer, machine: Machine, weights_cached: bool = False) -> int:
    """Bytes a layer moves to or from DRAM: its weights (read once per inference, unless
    `weights_cached`: see weights_resident), plus its input and output activations when
    together they exceed the machine's cache (or when the cache size is not known)."""
    if layer.kind == "fused":
        return 0
    acts = layer.act_in_bytes + layer.act_out_bytes
    spill = machine.cache_bytes is None or acts > machine.cache_bytes
    return (0 if weights_cached else layer.weight_bytes) + (acts if spill else 0)
