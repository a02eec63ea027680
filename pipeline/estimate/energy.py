"""Energy per inference from a device's energy model (a 45 nm proxy)."""

from __future__ import annotations

from pipeline.estimate.count import Layer
from pipeline.estimate.machine import Machine, dram_bytes, weights_resident
from pipeline.report import fig


def estimate_energy(layers: list[Layer], device, precision: str) -> dict:
    """Energy proxy per inference from the device's energy model (a 45 nm proxy):
    MACs x pJ/MAC(precision) + DRAM bytes x pJ/byte + on-chip activation bytes x pJ/byte (SRAM).

    DRAM bytes as in the roofline (`dram_bytes`): weights, plus activations that do not fit the
    device's L2 (all activations where its L2 size is not public). Activations that fit stay
    on chip and are charged at the SRAM figure, an L1-sized best case. Non-MAC arithmetic (bias,
    pooling, elementwise) is not charged.
    """
    em = device.energy_model
    m = Machine.of(device)
    pj_mac = {"fp32": em.pj_per_fp32_mac.value, "int8": em.pj_per_int8_mac.value}[precision]
    run = [l for l in layers if l.kind != "fused"]
    macs = sum(l.macs for l in layers)
    cached = weights_resident(run, m)
    dram = sum(dram_bytes(l, m, cached) for l in run)
    sram = sum(l.bytes_moved for l in run) - dram
    e_mac = macs * pj_mac * 1e-9  # pJ -> mJ
    e_dram = dram * em.pj_per_dram_byte.value * 1e-9
    e_sram = sram * em.pj_per_sram_byte.value * 1e-9
    cache = (
        f"L2 {device.l2_kib.value:g} KiB"
        if m.cache_bytes is not None
        else "no public L2 size: all activations from DRAM"
    )
    on = (
        f"{device.key}, {precision}, energy model {em.key}: {macs:,} MAC x {pj_mac} pJ + "
        f"{dram:,} B DRAM x {em.pj_per_dram_byte.value} pJ/B + {sram:,} B on chip x "
        f"{em.pj_per_sram_byte.value} pJ/B ({cache}); 45 nm proxy, relative use only"
    )
    return {
        "energy": fig(e_mac + e_dram + e_sram, "mJ", "estimated", on),
        "compute_energy": fig(e_mac, "mJ", "estimated", on),
        "dram_energy": fig(e_dram, "mJ", "estimated", on),
        "sram_energy": fig(e_sram, "mJ", "estimated", on),
        "energy_model": em.key,
    }
