"""Device profiles: every figure present and sourced, sane values, clear errors for bad files."""

import copy

import pytest
import yaml

from ground.errors import UsageError
from targets.devices import (
    DEFAULT_PATH,
    DEVICE_FIGURES,
    ENERGY_FIGURES,
    NULL_BASES,
    NUMERIC_BASES,
    DeviceProfileError,
    get_device,
    list_devices,
    load_devices,
)

REQUIRED_DEVICES = {"pixel-8", "galaxy-s24", "iphone-15-pro", "raspberry-pi-5", "cortex-a55"}


@pytest.fixture(scope="module")
def profiles():
    return load_devices()


@pytest.fixture
def raw():
    return yaml.safe_load(DEFAULT_PATH.read_text())


def _write(tmp_path, data):
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _all_figures(profile):
    figs = dict(profile.figures())
    for name in ENERGY_FIGURES:
        figs[f"energy.{name}"] = getattr(profile.energy_model, name)
    if profile.npu is not None:
        figs["npu.peak_tops"] = profile.npu.peak_tops
    return figs


def test_required_devices_present(profiles):
    assert REQUIRED_DEVICES <= set(profiles)
    assert list_devices() == sorted(profiles)


def test_every_figure_present_and_sourced(profiles):
    for key, p in profiles.items():
        assert p.name and p.soc and p.core and p.core_source, key
        figs = _all_figures(p)
        assert set(DEVICE_FIGURES) <= set(figs), key
        for name, fig in figs.items():
            assert fig.unit.strip(), (key, name)
            assert len(fig.source.strip()) > 10, (key, name)
            if fig.value is None:
                assert fig.basis in NULL_BASES, (key, name, fig.basis)
            else:
                assert fig.value > 0, (key, name)
                assert fig.basis in NUMERIC_BASES, (key, name, fig.basis)


def test_int8_peak_at_least_fp32_peak(profiles):
    for key, p in profiles.items():
        assert p.int8_mac_per_cycle.value >= p.fp32_mac_per_cycle.value, key
        assert p.peak_int8_gmac_s.value >= p.peak_fp32_gmac_s.value, key
        if p.peak_int8_i8mm_gmac_s.value is not None:
            assert p.peak_int8_i8mm_gmac_s.value >= p.peak_int8_gmac_s.value, key


def test_peaks_are_per_cycle_times_clock(profiles):
    for p in profiles.values():
        clock = p.clock_ghz.value
        fp32 = p.fp32_mac_per_cycle.value * clock
        int8 = p.int8_mac_per_cycle.value * clock
        assert p.peak_fp32_gmac_s.value == pytest.approx(fp32, rel=5e-3)
        assert p.peak_int8_gmac_s.value == pytest.approx(int8, rel=5e-3)


def test_compute_figures_name_their_instruction(profiles):
    for key, p in profiles.items():
        assert "FMLA" in p.fp32_mac_per_cycle.instruction, key
        assert "SDOT" in p.int8_mac_per_cycle.instruction, key
        assert "SMMLA" in p.int8_i8mm_mac_per_cycle.instruction, key


def test_energy_model_is_shared_horowitz_45nm_proxy(profiles):
    models = {id(p.energy_model) for p in profiles.values()}
    assert len(models) == 1  # referenced, not duplicated
    m = next(iter(profiles.values())).energy_model
    assert m.pj_per_fp32_mac.value == pytest.approx(3.7 + 0.9)
    assert m.pj_per_int8_mac.value == pytest.approx(0.2 + 0.03)
    assert m.pj_per_dram_byte.value == pytest.approx(640 / 4)
    assert m.pj_per_sram_byte.value == pytest.approx(5 / 4)
    assert "45 nm" in m.description and "PROXY" in m.description
    for name in ENERGY_FIGURES:
        assert getattr(m, name).basis == "proxy"


def test_iphone_neural_engine_is_core_ml_only(profiles):
    npu = profiles["iphone-15-pro"].npu
    assert npu is not None
    assert npu.peak_tops.value == pytest.approx(35)
    assert "Core ML" in npu.access


def test_peak_for_threads_caps_at_profiled_cores():
    pi = get_device("raspberry-pi-5")
    assert pi.peak_gmac_s("fp32", threads=1) == pytest.approx(19.2)
    assert pi.peak_gmac_s("fp32", threads=8) == pytest.approx(4 * 19.2)
    assert get_device("pixel-8").peak_gmac_s("int8", threads=4) == pytest.approx(186.24)
    with pytest.raises(DeviceProfileError, match="i8mm"):
        pi.peak_gmac_s("int8", i8mm=True)  # Cortex-A76 has no SMMLA
    with pytest.raises(UsageError, match="fp32, int8"):
        pi.peak_gmac_s("fp16")


def test_unknown_device_lists_available():
    with pytest.raises(UsageError) as err:
        get_device("pixel-99")
    msg = str(err.value)
    assert "'pixel-99'" in msg
    for name in REQUIRED_DEVICES:
        assert name in msg


def test_load_accepts_path(tmp_path, raw):
    path = _write(tmp_path, raw)
    assert set(load_devices(path)) == set(load_devices())
    assert get_device("cortex-a55", path=path).core == "Cortex-A55"


def test_unknown_device_key_is_named(tmp_path, raw):
    raw["devices"]["pixel-8"]["ram_speed_mt_s"] = {
        "value": 8533,
        "unit": "MT/s",
        "basis": "assumption",
        "source": "x",
    }
    with pytest.raises(DeviceProfileError) as err:
        load_devices(_write(tmp_path, raw))
    assert "'ram_speed_mt_s'" in str(err.value)
    assert "'pixel-8'" in str(err.value)


def test_unknown_figure_key_is_named(tmp_path, raw):
    raw["devices"]["galaxy-s24"]["clock_ghz"]["confidence"] = "high"
    with pytest.raises(DeviceProfileError) as err:
        load_devices(_write(tmp_path, raw))
    assert "'confidence'" in str(err.value)
    assert "'galaxy-s24'" in str(err.value)


def test_unknown_top_level_key_is_named(tmp_path, raw):
    raw["accelerators"] = {}
    with pytest.raises(DeviceProfileError, match="'accelerators'"):
        load_devices(_write(tmp_path, raw))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: f.pop("source"), "missing 'source'"),
        (lambda f: f.update(source="  "), "non-empty source"),
        (lambda f: f.update(value=-1), "positive"),
        (lambda f: f.update(value=None), "basis must be one of not_public"),
        (lambda f: f.update(value=None, basis="not_public"), "must have a value"),
        (lambda f: f.update(value="fast"), "number or null"),
    ],
)
def test_bad_figures_are_rejected(tmp_path, raw, mutate, message):
    bad = copy.deepcopy(raw)
    mutate(bad["devices"]["raspberry-pi-5"]["clock_ghz"])
    with pytest.raises(DeviceProfileError, match=message):
        load_devices(_write(tmp_path, bad))


def test_inconsistent_peak_is_rejected(tmp_path, raw):
    raw["devices"]["cortex-a55"]["peak_fp32_gmac_s"]["value"] = 9.9
    with pytest.raises(DeviceProfileError, match="peak_fp32_gmac_s"):
        load_devices(_write(tmp_path, raw))


def test_undefined_energy_model_is_rejected(tmp_path, raw):
    raw["devices"]["cortex-a55"]["energy_model"] = "horowitz-7nm"
    with pytest.raises(DeviceProfileError, match="horowitz-7nm.*available: horowitz-45nm"):
        load_devices(_write(tmp_path, raw))


def test_other_clusters_name_a_core_of_the_catalogue(tmp_path, raw, profiles):
    p8 = profiles["pixel-8"]
    assert [(c.core.key, c.count, c.clock_ghz.value) for c in p8.other_clusters] == [
        ("cortex-a715", 4, 2.37),
        ("cortex-a510", 4, 1.7),
    ]
    assert p8.other_clusters[0].peak_gmac_s("fp32") == pytest.approx(8 * 2.37)
    raw["devices"]["pixel-8"]["other_clusters"][0]["core"] = "cortex-z9"
    with pytest.raises(DeviceProfileError, match="'cortex-z9' is not in the cores catalogue"):
        load_devices(_write(tmp_path, raw))


def test_a_peak_left_out_is_derived_from_the_per_cycle_figure(tmp_path, raw):
    del raw["devices"]["raspberry-pi-5"]["peak_fp32_gmac_s"]
    pi = load_devices(_write(tmp_path, raw))["raspberry-pi-5"]
    assert pi.peak_fp32_gmac_s.value == pytest.approx(8 * 2.4)
    assert pi.peak_fp32_gmac_s.basis == "derived" and "x clock_ghz" in pi.peak_fp32_gmac_s.source


def test_every_published_soc_but_one_has_a_profile():
    """targets/published_latency.yaml's SoCs map to profiles (benchmarks/device_validation.py,
    read without importing it); the one left out is a core without NEON."""
    import ast

    root = DEFAULT_PATH.parents[1]
    tree = ast.parse((root / "benchmarks" / "device_validation.py").read_text())
    maps = {
        t.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name) and t.id in ("DEVICE_OF", "NOT_DESCRIBED")
    }
    rows = yaml.safe_load((root / "targets" / "published_latency.yaml").read_text())["rows"]
    assert {r["soc"] for r in rows} == set(maps["DEVICE_OF"]) | set(maps["NOT_DESCRIBED"])
    assert set(maps["DEVICE_OF"].values()) <= set(list_devices())
