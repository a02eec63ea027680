"""Device estimates (issue 28): threads placed on the profiles' core clusters, a memory term for
every profile, the runtime's own per-call cost (never this host's runner), and every estimate
shown with its range and validated error, or `unvalidated`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from pipeline import estimate as E
from pipeline.estimate import device_model as D
from pipeline.estimate import per_device
from pipeline.estimate.device_fit import RUNTIME, DeviceFit, nearest_validated
from targets import get_target
from targets.devices import NUMERIC_BASES, get_device, list_devices

X = torch.randn(1, 3, 32, 32)
EFF = {"conv": 0.5, "dwconv": 0.25, "gemm": 0.5}


def _fit(**kw) -> DeviceFit:
    base = {
        "eff": {"fp32": dict(EFF), "int8": dict(EFF)},
        "elem_bytes_per_cycle": 4.0,
        "transcendental_cycles": 2.0,
        "bw_eff": 1.0,
        "runtimes": {
            RUNTIME: {
                "speed": {"fp32": 1.0, "int8": 1.0},
                "layer_kcycles": 2.0,
                "call_kcycles": 10.0,
                "parallel_eff": 0.5,
                "split": "dynamic",
            }
        },
    }
    base.update(kw)
    return DeviceFit(**base)


def _layer(kind="conv", macs=0, ops=0, wb=0, ain=0, aout=0, op="convolution") -> E.Layer:
    return E.Layer("l", kind, "Conv2d", [op], macs, ops, wb, ain, aout)


def _ms(layers, dev, threads, fit) -> float:
    cases = D.stack([(D.case_layers(layers, dev), dev, RUNTIME, "fp32", threads)])
    return float(D.case_ms(cases, fit)[0])


def test_threads_fill_the_fastest_cluster_first():
    p8 = get_device("pixel-8")  # 1x X3 @ 2.91, 4x A715 @ 2.37, 4x A510 @ 1.7
    one = D.placement(p8, 1)
    assert one.cores == "1x Cortex-X3 @ 2.91 GHz" and one.rest_gmac["fp32"] == 0
    four = D.placement(p8, 4)
    assert four.cores == "1x Cortex-X3 @ 2.91 GHz + 3x Cortex-A715 @ 2.37 GHz"
    assert four.first_gmac["fp32"] == pytest.approx(16 * 2.91)
    assert four.rest_gmac["fp32"] == pytest.approx(3 * 8 * 2.37)
    assert four.rest_ghz == pytest.approx(3 * 2.37) and four.slowest_ghz == 2.37
    many = D.placement(p8, 20)
    assert many.used == 9 and many.slowest_gmac["int8"] == pytest.approx(16 * 1.7)
    # the count an app's runtime picks: the cores outside the slowest cluster
    assert D.app_threads(p8) == 5
    assert D.app_threads(get_device("galaxy-s24")) == 6
    assert D.app_threads(get_device("raspberry-pi-5")) == 4  # one cluster: all of it


def test_every_profile_has_a_memory_term_with_its_basis():
    for key in list_devices():
        bw = get_device(key).dram_bandwidth_gb_s
        assert bw.value and bw.value > 0 and bw.basis in NUMERIC_BASES, key
        if bw.basis == "assumption":
            assert "assume" in bw.source.lower(), key


def test_device_model_by_hand():
    pi = get_device("raspberry-pi-5")  # 4x A76 @ 2.4 GHz, 19.2 fp32 GMAC/s per core, L2 512 KiB
    bw = pi.dram_bandwidth_gb_s.value
    conv = _layer(macs=10**9, wb=10**6, ain=1000, aout=1000)
    add = _layer(kind="add", ops=250_000, ain=10**6, aout=10**6, op="add")
    fit = _fit()
    # conv: 1e9 / (19.2e9 x 0.5) = 104.17 ms (its weights from DRAM: 0.06 ms, less);
    # add: 2e6 B / (2.4e9 cycles/s x 4 B/cycle) = 0.208 ms > 2e6 B / bandwidth (spills the L2);
    # + 2 kcycles per layer and 10 per call at 2.4 GHz
    want = 1e9 / (19.2e9 * 0.5) * 1e3 + 2e6 / (2.4e9 * 4) * 1e3 + (2 * 2 + 10) / 2.4e3
    assert _ms([conv, add], pi, 1, fit) == pytest.approx(want)
    assert 2e6 / (bw * 1e9) * 1e3 < 2e6 / (2.4e9 * 4) * 1e3
    # 2 threads, parallel efficiency 0.5: 1.5 cores for both
    want2 = (1e9 / (19.2e9 * 0.5) + 2e6 / (2.4e9 * 4)) * 1e3 / 1.5 + (2 * 2 + 10) / 2.4e3
    assert _ms([conv, add], pi, 2, fit) == pytest.approx(want2)
    # a sigmoid costs its cycles per element on top of its bytes; a BN folded away costs nothing
    sig = _layer(kind="other", ops=10**6, ain=10**5, aout=10**5, op="sigmoid")
    fused = _layer(kind="fused", macs=10**9)
    extra = _ms([sig, fused], pi, 1, fit) - (2 + 10) / 2.4e3
    assert extra == pytest.approx((2e5 / (2.4e9 * 4) + 10**6 * 2.0 / 2.4e9) * 1e3)
    # a device factor multiplies the whole estimate
    f2 = _fit(device_factor={"raspberry-pi-5": 2.0})
    assert _ms([conv], pi, 1, f2) == pytest.approx(2 * _ms([conv], pi, 1, fit))


def test_a_static_split_waits_for_the_slowest_core():
    p8 = get_device("pixel-8")
    rt = dict(_fit().runtimes[RUNTIME], parallel_eff=1.0)
    dyn = _fit(runtimes={RUNTIME: rt})
    static = _fit(runtimes={RUNTIME: dict(rt, split="static")})
    conv = [_layer(macs=10**9)]
    # 5 threads: X3 (46.56) + 4 A715 (18.96 each) when each takes work as it frees up,
    # 5 x the A715's rate when each gets an equal share
    over = (2 + 10) / 2.91e3
    assert _ms(conv, p8, 5, dyn) - over == pytest.approx(1e9 / (122.4e9 * 0.5) * 1e3)
    assert _ms(conv, p8, 5, static) - over == pytest.approx(1e9 / (5 * 18.96e9 * 0.5) * 1e3)


def test_attention_and_data_movement_are_counted():
    class Attn(nn.Module):  # a container: its own ops become functional layers, one each
        def __init__(self):
            super().__init__()
            self.inp = nn.Identity()

        def forward(self, q):  # (B, H, L, E) = (1, 2, 16, 8)
            q = self.inp(q)
            return torch.cat([F.scaled_dot_product_attention(q, q, q), q], dim=1)

    layers = E.count_layers(Attn(), torch.randn(1, 2, 16, 8))
    att = next(x for x in layers if x.kind == "linear")
    assert att.macs == 2 * (1 * 2 * 16 * 16 * 8)  # Q K^T and (scores) V
    move = next(x for x in layers if x.kind == "move")
    assert move.ops_seen == ["cat"] and D.device_class(move) == "elementwise"
    shuffle = models.create_model("torchvision:shufflenet_v2_x0_5", 3, 10, 32).eval()
    kinds = [x.kind for x in E.count_layers(shuffle, X) if "clone" in x.ops_seen]
    assert kinds and set(kinds) == {"move"}  # the channel shuffle's transpose + copy


def test_no_device_estimate_includes_this_hosts_runner(monkeypatch):
    """(a) The android bundle's estimates take their per-call (and every other) term from the
    device fit, never from the host fit, which holds this host's Python runner time."""

    def no_host(*a, **k):
        raise AssertionError("a device estimate read the host fit")

    monkeypatch.setattr(E.hostfit, "load_host_fit", no_host)
    monkeypatch.setattr(E, "load_host_fit", no_host)
    fit = E.load_device_fit()
    m = models.create_model("small_cnn", 3, 10, 32).eval()
    devices = get_target("android").devices
    out = per_device.estimate_for_devices(m, X, "int8", list(devices))
    for key in devices:
        dev = get_device(key)
        for t, block in out[key]["latency"].items():
            first = D.placement(dev, int(t)).first_ghz
            factor = fit.device_factor.get(key, 1.0)
            want = fit.runtimes[RUNTIME]["call_kcycles"] / first * 1e-3 * factor
            assert block["per_call"]["value"] == pytest.approx(want, abs=1e-6)
            assert "no time of this host or its Python runner" in block["per_call"]["on"]


def test_each_estimate_shows_value_range_error_and_rows_or_unvalidated():
    """(b) Value to 2 significant digits, a range, the validated error and its row count; a
    device without published rows says `unvalidated` and gives the nearest validated one's."""
    fit = E.load_device_fit()
    m = models.create_model("small_cnn", 3, 10, 32).eval()
    out = per_device.estimate_for_devices(m, X, "int8", list_devices(), fit=fit)
    validated = set(fit.validation["by_device"])
    assert "raspberry-pi-5" in validated and "pixel-8" not in validated
    for key, d in out.items():
        val = d["validation"]
        assert val["rows"]["source"] == "counted" and val["rows"]["value"] > 0
        assert val["median_abs_error"]["source"] == "measured"
        if key in validated:
            assert val["state"] == "validated" and val["rests_on"] == key
            assert val["rows"]["value"] == fit.validation["by_device"][key]["rows"]
        else:
            assert val["state"] == "unvalidated" and val["rests_on"] in validated
            assert val["rests_on"] in val["note"]
        for block in d["latency"].values():
            v = block["latency"]["value"]
            assert v > 0 and v == float(f"{v:.2g}") and block["latency"]["source"] == "estimated"
            lo, hi = block["range"]["value"]
            assert 0 < lo <= hi and block["validation"] == val["state"]
            assert ("new_device" in val) == (key not in validated)
            assert block["validated_error"] == val["median_abs_error"]
            assert block["validated_rows"] == val["rows"]


def test_the_range_applies_the_p10_and_p90_error():
    by_dev = {
        "raspberry-pi-5": {
            "rows": 7,
            "runtimes": ["executorch"],
            "median_abs_error": 0.1,
            "p10_error": -0.2,
            "p90_error": 0.25,
            "within_25pct": 0.7,
        }
    }
    new = {"rows": 7, "median_abs_error": 0.3, "p10_error": -0.5, "p90_error": 0.6}
    fit = _fit(validation={"by_device": by_dev, "on": "test", "new_device": new})
    m = models.create_model("small_cnn", 3, 10, 32).eval()
    out = per_device.estimate_for_devices(m, X, "fp32", ["raspberry-pi-5", "pixel-8"], 1, fit)
    # the Pi: its own error; pixel-8 (no rows) shows the Pi's, the only validated device, and
    # its range applies the error of devices estimated without their own rows
    for key, (p10, p90) in {"raspberry-pi-5": (-0.2, 0.25), "pixel-8": (-0.5, 0.6)}.items():
        block = out[key]["latency"]["1"]
        raw = _ms(E.count_layers(m, X, "fp32"), get_device(key), 1, fit)
        assert block["latency"]["value"] == float(f"{raw:.2g}")
        lo, hi = block["range"]["value"]
        assert (lo, hi) == (float(f"{raw / (1 + p90):.2g}"), float(f"{raw / (1 + p10):.2g}"))
    val = out["pixel-8"]["validation"]
    assert val["rests_on"] == "raspberry-pi-5" and val["median_abs_error"]["value"] == 0.1
    assert val["new_device"]["median_abs_error"]["value"] == 0.3


def test_nearest_validated_device_is_the_closest_first_core():
    profiles = {k: get_device(k) for k in list_devices()}
    fit = _fit(
        validation={"by_device": {"pixel-4": {}, "raspberry-pi-2": {}, "raspberry-pi-4": {}}}
    )
    # an X3 at 2.91 GHz is nearest the Snapdragon 855's A76 prime core at 2.84 GHz; a 1.8 GHz
    # A55 (7.2 GMAC/s) nearest the Pi 4's 1.5 GHz A72 (6.0), not the Pi 2's 0.9 GHz A7 (1.8)
    assert nearest_validated(fit, profiles["pixel-8"], profiles) == "pixel-4"
    assert nearest_validated(fit, profiles["cortex-a55"], profiles) == "raspberry-pi-4"


def test_the_device_fit_rests_on_the_published_table():
    fit = E.load_device_fit()
    v = fit.validation
    assert v["method"] == "leave-one-model-out" and v["all"]["rows"] >= 250
    assert sum(s["rows"] for s in v["by_device"].values()) == v["all"]["rows"]
    assert set(v["by_device"]) <= set(list_devices())
    assert set(fit.device_factor) == set(v["by_device"])
    for r in fit.runtimes.values():  # the runtime's own costs, bounded as the fit bounds them
        assert 0 < r["call_kcycles"] <= 500 and 0 < r["layer_kcycles"] <= 50
    assert np.isfinite(v["all"]["median_abs_error"])
