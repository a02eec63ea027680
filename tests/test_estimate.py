"""Counted layers, roofline and energy arithmetic, ExecuTorch planned memory / ETDump breakdown,
peak RSS (issue 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from pipeline import estimate as E
from pipeline import profile
from pipeline.prune import count
from targets.devices import get_device
from targets.executorch_xnnpack import op_breakdown, planned_memory

X = torch.randn(1, 3, 32, 32)


def _cal(**kw) -> E.HostFit:
    base = {
        "eff": {
            "fp32": {"conv": 0.5, "dwconv": 0.25, "linear": 0.4, "other": 0.1},
            "int8": {"conv": 0.5, "dwconv": 0.25, "linear": 0.4, "other": 0.1},
        },
        "bw_eff": {"fp32": 1.0, "int8": 1.0},
        "overhead_ms": {"fp32": 0.01, "int8": 0.01},
        "call_overhead_ms": {"fp32": 0.0, "int8": 0.0},
        "parallel_eff": {"fp32": 0.5, "int8": 0.5},
        "host_clock_ghz": 2.0,
    }
    base.update(kw)
    return E.HostFit(**base)


def _layer(kind="conv", macs=0, ops=0, wb=0, ain=0, aout=0) -> E.Layer:
    return E.Layer("l", kind, "Conv2d", ["convolution"], macs, ops, wb, ain, aout)


def test_small_cnn_layer_sums_match_torch_pruning():
    m = models.create_model("small_cnn", 3, 10, 32).eval()
    layers = E.count_layers(m, X, "fp32")
    tp_ops, _ = count(m, X)
    # torch-pruning counts conv/linear MACs plus bias, BN (2/elem), ReLU and pooling ops
    assert sum(l.macs + l.ops for l in layers) == tp_ops
    # the MACs alone, by hand: four 3x3 convs and the 128 -> 10 linear
    hand = (
        3 * 32 * 9 * 32 * 32
        + 32 * 64 * 9 * 32 * 32
        + 64 * 64 * 9 * 16 * 16
        + 64 * 128 * 9 * 16 * 16
        + 128 * 10
    )
    assert sum(l.macs for l in layers) == hand
    kinds = [l.kind for l in layers]
    assert kinds.count("conv") == 4 and kinds.count("linear") == 1 and kinds.count("pool") == 2
    assert kinds.count("fused") == 8  # 4 BN + 4 ReLU folded by XNNPACK
    first = layers[0]
    assert (first.weight_bytes, first.act_in_bytes, first.act_out_bytes) == (
        3 * 32 * 9 * 4,
        3 * 32 * 32 * 4,
        32 * 32 * 32 * 4,
    )
    int8 = E.count_layers(m, X, "int8")[0]
    assert (int8.weight_bytes, int8.act_in_bytes) == (3 * 32 * 9, 3 * 32 * 32)


def test_functional_ops_are_counted():
    """Residual adds (resnet) and bmm (vit) run outside leaf modules and still appear."""
    res = E.count_layers(models.create_model("resnet20", 3, 10, 32).eval(), X)
    adds = [l for l in res if l.kind == "add"]
    assert len(adds) == 9 and all(l.module == "functional" for l in adds)
    vit = E.count_layers(models.create_model("vit_tiny", 3, 10, 32).eval(), X)
    bmm = [l for l in vit if "bmm" in l.ops_seen]
    assert len(bmm) == 8 and all(l.macs > 0 for l in bmm)
    table = E.layer_table(models.create_model("dscnn", 3, 10, 32).eval(), X, "int8")
    assert table["source"] == "counted" and table["totals"]["macs"]["source"] == "counted"
    assert {r[1] for r in table["rows"]} >= {"conv", "dwconv", "pwconv", "linear"}


def test_roofline_by_hand():
    m = E.Machine(
        "hand", clock_ghz=2.0, cores=4, peak_gmac_s={"fp32": 100.0, "int8": 400.0}, bw_gb_s=10.0
    )
    cal = _cal()
    # compute-bound: 1e9 MAC / (100e9 x 0.5) = 20 ms; memory 1e8 B / 10e9 = 10 ms; +0.01 ms
    layers = [_layer(macs=10**9, wb=10**8)]
    assert E.roofline_ms(layers, m, "fp32", 1, cal) == pytest.approx(20.01)
    # memory-bound: 3e8 B / 10e9 B/s = 30 ms > 20 ms (no cache size given: activations count)
    layers = [_layer(macs=10**9, wb=10**8, ain=10**8, aout=10**8)]
    (row,) = E.layer_times(layers, m, "fp32", 1, cal)
    assert row["bound"] == "memory" and row["ms"] == pytest.approx(30.01)
    # with a cache the activations fit in, only the weights come from DRAM: compute-bound again
    cached = E.Machine("hand", 2.0, 4, {"fp32": 100.0, "int8": 400.0}, 10.0, cache_bytes=2 * 10**8)
    assert E.roofline_ms(layers, cached, "fp32", 1, cal) == pytest.approx(20.01)
    # 3 threads on 4 cores, parallel efficiency 0.5 -> 2 effective cores: compute 10 ms
    layers = [_layer(macs=10**9)]
    assert E.roofline_ms(layers, m, "fp32", 3, cal) == pytest.approx(10.01)
    # 8 threads: min(8, 4) cores -> 1 + 3 x 0.5 = 2.5 effective cores: 8 ms
    assert E.roofline_ms(layers, m, "fp32", 8, cal) == pytest.approx(8.01)
    # fused layers cost nothing; the per-layer overhead scales with host clock / device clock
    fast = E.Machine("fast", 4.0, 4, {"fp32": 100.0, "int8": 400.0}, 10.0)
    assert E.roofline_ms(
        [_layer(kind="fused", macs=10**9), _layer(kind="add", ops=0)], fast, "fp32", 1, cal
    ) == pytest.approx(0.005)


def test_weights_that_fit_the_last_level_cache_cost_no_dram_time():
    layers = [_layer(macs=10**6, wb=10**8), _layer(macs=10**6, wb=10**8)]
    dram = E.Machine("dram", 2.0, 4, {"fp32": 100.0, "int8": 400.0}, 10.0, cache_bytes=10**9)
    # each layer memory-bound on its weights: 1e8 B / 10e9 B/s = 10 ms, + 0.01 ms overhead
    assert E.roofline_ms(layers, dram, "fp32", 1, _cal()) == pytest.approx(20.02)
    # all 2e8 weight bytes fit a 256 MB last-level cache: compute-bound, 1e6 / 50e9 = 0.02 ms
    llc = E.Machine(
        "llc", 2.0, 4, {"fp32": 100.0, "int8": 400.0}, 10.0, cache_bytes=10**9, llc_bytes=2**28
    )
    assert E.weights_resident(layers, llc) and not E.weights_resident(layers, dram)
    assert E.roofline_ms(layers, llc, "fp32", 1, _cal()) == pytest.approx(0.06)
    # one byte too many and they all come from DRAM again
    small = E.Machine(
        "small",
        2.0,
        4,
        {"fp32": 100.0, "int8": 400.0},
        10.0,
        cache_bytes=10**9,
        llc_bytes=2 * 10**8 - 1,
    )
    assert E.roofline_ms(layers, small, "fp32", 1, _cal()) == pytest.approx(20.02)


def test_portable_layers_split_over_threads_by_their_own_efficiency():
    m = E.Machine("hand", 2.0, 4, {"fp32": 100.0, "int8": 400.0}, None)
    effs = {"conv": 0.5, "dwconv": 0.25, "linear": 0.4, "other": 0.1, "portable": 0.01}
    cal = _cal(
        eff={"fp32": effs, "int8": effs},
        portable_ms={"fp32": 0.005, "int8": 0.0},
        parallel_eff_portable={"fp32": 0.0, "int8": 0.0},
    )
    conv, norm = _layer(macs=10**9), _layer(kind="portable", ops=10**7)
    # 1 thread: conv 20 ms + 0.01; norm 1e7 / (100e9 x 0.01) = 10 ms + 0.01 + 0.005 per portable layer
    assert E.roofline_ms([conv, norm], m, "fp32", 1, cal) == pytest.approx(30.025)
    # 2 threads: the conv gains 1.5x (parallel_eff 0.5), the portable kernel none (0.0)
    assert E.roofline_ms([conv, norm], m, "fp32", 2, cal) == pytest.approx(20 / 1.5 + 10 + 0.025)
    # a calibration without the portable figure splits them like the others
    old = _cal(eff={"fp32": effs, "int8": effs})
    assert E.roofline_ms([norm], m, "fp32", 2, old) == pytest.approx(10 / 1.5 + 0.01)


def test_shape_factor_by_hand():
    m = E.Machine("hand", 2.0, 4, {"fp32": 100.0, "int8": 400.0}, None)
    cal = _cal(
        shape_m0={"fp32": 4.0, "int8": 0.0},
        shape_n0={"fp32": 16.0, "int8": 0.0},
        shape_k0={"fp32": 100.0, "int8": 0.0},
        sync_ms={"fp32": 0.02, "int8": 0.0},
    )
    lay = _layer(macs=10**9)
    lay.gemm_m, lay.gemm_n, lay.gemm_k = 4, 16, 100
    # eff 0.5 x 4/8 x 16/32 x 100/200 = 0.0625: 1e9 / (100e9 x 0.0625) = 160 ms, + 0.01 ms
    assert E.roofline_ms([lay], m, "fp32", 1, cal) == pytest.approx(160.01)
    # 2 threads: 1.5 effective cores, and the per-layer sync cost (0.02 ms) on top
    assert E.roofline_ms([lay], m, "fp32", 2, cal) == pytest.approx(160 / 1.5 + 0.03)
    # int8 with zero shape constants: no penalty, int8 peak
    assert E.roofline_ms([lay], m, "int8", 1, cal) == pytest.approx(
        1e9 / (400e9 * 0.5) * 1e3 + 0.01
    )


def test_null_bandwidth_states_missing_memory_term():
    # every device profile now gives a bandwidth (issue 28); the host roofline still says so
    # when a machine has none
    m = E.Machine("hand", 2.0, 4, {"fp32": 100.0, "int8": 400.0}, None, "not public (test)")
    out = E.estimate_latency([_layer(macs=10**6, ain=10**9)], m, "fp32", 1, _cal())
    assert out["memory_term"] == "missing"
    assert "not public (test)" in out["memory_term_missing"]
    assert "memory term missing" in out["latency"]["on"]
    # the compute term and overhead only: 1e6 / (peak x 0.5) + 0.01 x 2.0 / clock
    want = 1e6 / (100e9 * 0.5) * 1e3 + 0.01 * 2.0 / 2.0
    assert out["latency"]["value"] == pytest.approx(want, rel=1e-5)
    assert out["latency"]["source"] == "estimated"


def test_energy_by_hand():
    dev = get_device("raspberry-pi-5")  # L2 512 KiB: these activations stay on chip
    em = dev.energy_model
    layers = [_layer(macs=10**6, wb=1000, ain=2000, aout=3000), _layer(kind="fused", macs=0, wb=50)]
    out = E.estimate_energy(layers, dev, "fp32")
    want = (
        10**6 * em.pj_per_fp32_mac.value
        + 1000 * em.pj_per_dram_byte.value
        + 5000 * em.pj_per_sram_byte.value
    ) * 1e-9
    assert out["energy"]["value"] == pytest.approx(want, rel=1e-4)
    assert out["energy"]["unit"] == "mJ" and out["energy"]["source"] == "estimated"
    assert em.key in out["energy"]["on"] and out["energy_model"] == em.key
    int8 = E.estimate_energy(layers, dev, "int8")
    assert int8["compute_energy"]["value"] == pytest.approx(10**6 * em.pj_per_int8_mac.value * 1e-9)
    # activations larger than the L2 go to DRAM
    big = [_layer(macs=0, wb=1000, ain=600 * 1024, aout=0)]
    want = (1000 + 600 * 1024) * em.pj_per_dram_byte.value * 1e-9
    assert E.estimate_energy(big, dev, "fp32")["dram_energy"]["value"] == pytest.approx(
        want, rel=1e-3
    )


def test_the_host_fit_is_committed_and_carries_its_error():
    # targets/host_calibration.json is committed (written by benchmarks/estimator.py): a
    # missing one is a failure, not a reason to skip. Device estimates do not use it (issue 28:
    # tests/test_device_estimate.py); benchmarks/estimator.py validates it on this host.
    cal = E.load_host_fit()
    err = E.hostfit.estimator_error(cal, "int8")
    assert err["within_15pct"]["source"] == "measured"
    assert "on this host's" in E.hostfit.fit_caveat(cal) or "another machine" in (
        E.hostfit.fit_caveat(cal)
    )


def test_this_cpu_names_a_cpu():
    assert isinstance(E.this_cpu(), str) and E.this_cpu()


# ---------------------------------------------------------------------------------------------
# files: one small_cnn .pte shared by the tests below


@pytest.fixture(scope="module")
def small_pte(tmp_path_factory):
    import targets
    from targets._base import ExportRequest

    out = tmp_path_factory.mktemp("pte")
    m = models.create_model("small_cnn", 3, 10, 32).eval()
    e = targets.get_backend("executorch-xnnpack").export(ExportRequest(m, X, "fp32", None, out))
    return e.path


def test_planned_memory(small_pte):
    pm = planned_memory(small_pte)
    assert pm["planned_bytes"]["source"] == "counted"
    # at least the fp32 input (3x32x32) and output (10) tensors are planned
    assert pm["planned_bytes"]["value"] >= (3 * 32 * 32 + 10) * 4
    assert "XNNPACK" in pm["note"]


def test_op_breakdown_has_real_op_names(small_pte):
    ob = op_breakdown(small_pte, np.zeros((1, 3, 32, 32), np.float32), runs=3, warmup=1)
    names = [r["name"] for r in ob["rows"]]
    assert "Method::execute" in names and "DELEGATE_CALL" in names
    assert any(n.startswith("Convolution (NHWC, F32)") for n in names)  # XNNPACK's own events
    assert ob["top"] and ob["top"][0].startswith("Convolution")
    assert ob["total"]["source"] == "measured" and ob["total"]["value"] > 0


def test_peak_rss(small_pte):
    r = profile.peak_rss("executorch-xnnpack", small_pte, (1, 3, 32, 32))
    base, peak, own = (r[k]["value"] for k in ("baseline_rss", "peak_rss", "file_rss"))
    assert 20 * 2**20 < base < 4 * 2**30  # python + numpy + torch + executorch
    assert peak >= base and own == peak - base
    assert own < 512 * 2**20  # a 0.5 MB program does not take half a gigabyte
    assert all(
        r[k]["source"] == "measured" and r[k]["unit"] == "B"
        for k in ("baseline_rss", "peak_rss", "file_rss")
    )
