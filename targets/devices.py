"""Device profiles: the per-core compute, memory and energy figures estimates are made from.

The figures live in `devices.yaml` (schema in its header comment); this module loads them into
frozen dataclasses and validates them on load: every figure carries value, unit, basis and a
non-empty source; a null value must say why (basis `not_public` or `not_applicable`); numbers
are positive; per-second peaks agree with per-cycle figures x clock (a peak left out is derived
so); the SoC's other clusters name a core of the `cores` catalogue; and any key the schema does
not know is an error naming the device and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from ground.errors import SlimshipError, unknown

DEFAULT_PATH = Path(__file__).parent / "devices.yaml"

NUMERIC_BASES = ("published", "derived", "third_party", "proxy", "assumption")
NULL_BASES = ("not_public", "not_applicable")

_FIGURE_REQUIRED = ("value", "unit", "basis", "source")
_FIGURE_OPTIONAL = ("instruction",)

# Device figures, in file order. Each is a numeric figure (value may be null with a reason).
DEVICE_FIGURES = (
    "clock_ghz",
    "cores",
    "fp32_mac_per_cycle",
    "int8_mac_per_cycle",
    "int8_i8mm_mac_per_cycle",
    "peak_fp32_gmac_s",
    "peak_int8_gmac_s",
    "peak_int8_i8mm_gmac_s",
    "dram_bandwidth_gb_s",
    "l2_kib",
    "l3_kib",
)
# Figures every profile must give a number for: an estimate cannot run without them.
_REQUIRED_NUMBERS = (
    "clock_ghz",
    "cores",
    "fp32_mac_per_cycle",
    "int8_mac_per_cycle",
    "peak_fp32_gmac_s",
    "peak_int8_gmac_s",
)
# peak figure -> per-cycle figure it is derived from (peak = per_cycle x clock_ghz)
_PEAK_OF = {
    "peak_fp32_gmac_s": "fp32_mac_per_cycle",
    "peak_int8_gmac_s": "int8_mac_per_cycle",
    "peak_int8_i8mm_gmac_s": "int8_i8mm_mac_per_cycle",
}
_DEVICE_TEXT_REQUIRED = ("name", "soc", "energy_model")
_DEVICE_TEXT_OPTIONAL = ("other_cores", "notes")
_DEVICE_KEYS = {
    *DEVICE_FIGURES,
    *_DEVICE_TEXT_REQUIRED,
    *_DEVICE_TEXT_OPTIONAL,
    "core",
    "npu",
    "other_clusters",
}
# peak figures a profile may leave out: then derived as per-cycle figure x clock_ghz
_DERIVABLE = set(_PEAK_OF)
# the core catalogue (top-level `cores`): per-cycle figures of a core type, shared by profiles
CORE_FIGURES = ("fp32_mac_per_cycle", "int8_mac_per_cycle", "int8_i8mm_mac_per_cycle")
_CORE_KEYS = {"name", *CORE_FIGURES}
_CLUSTER_KEYS = ("core", "count", "clock_ghz")
_NPU_KEYS = ("name", "access", "peak_tops")
ENERGY_FIGURES = ("pj_per_fp32_mac", "pj_per_int8_mac", "pj_per_dram_byte", "pj_per_sram_byte")
_ENERGY_KEYS = set(ENERGY_FIGURES) | {"description"}
_TOP_KEYS = ("energy_models", "devices")
_TOP_OPTIONAL = ("cores",)


class DeviceProfileError(SlimshipError):
    """devices.yaml (or a file given in its place) does not follow the schema."""


@dataclass(frozen=True)
class Figure:
    """One sourced number. `value` is None when no public figure exists (see `basis`)."""

    value: float | None
    unit: str
    basis: str
    source: str
    instruction: str | None = None

    @property
    def known(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class EnergyModel:
    key: str
    description: str
    pj_per_fp32_mac: Figure
    pj_per_int8_mac: Figure
    pj_per_dram_byte: Figure
    pj_per_sram_byte: Figure


@dataclass(frozen=True)
class Npu:
    """An accelerator on the SoC that CPU estimates do not use; `access` says what reaches it."""

    name: str
    access: str
    peak_tops: Figure


@dataclass(frozen=True)
class CoreType:
    """A core design from the `cores` catalogue: its per-cycle MAC figures, per core."""

    key: str
    name: str
    fp32_mac_per_cycle: Figure
    int8_mac_per_cycle: Figure
    int8_i8mm_mac_per_cycle: Figure


@dataclass(frozen=True)
class Cluster:
    """`count` cores of one type at one clock: a cluster of the SoC besides the profiled one."""

    core: CoreType
    count: int
    clock_ghz: Figure

    def peak_gmac_s(self, precision: str) -> float:
        """Per-core peak GMAC/s at `precision` (fp32, or int8 with the catalogue's figure)."""
        per = self.core.fp32_mac_per_cycle if precision == "fp32" else self.core.int8_mac_per_cycle
        return per.value * self.clock_ghz.value


@dataclass(frozen=True)
class DeviceProfile:
    key: str
    name: str
    soc: str
    core: str
    core_source: str
    energy_model: EnergyModel
    clock_ghz: Figure
    cores: Figure
    fp32_mac_per_cycle: Figure
    int8_mac_per_cycle: Figure
    int8_i8mm_mac_per_cycle: Figure
    peak_fp32_gmac_s: Figure
    peak_int8_gmac_s: Figure
    peak_int8_i8mm_gmac_s: Figure
    dram_bandwidth_gb_s: Figure
    l2_kib: Figure
    l3_kib: Figure
    other_cores: str = ""
    notes: str = ""
    npu: Npu | None = None
    # the SoC's other CPU clusters, fastest first; a T-thread estimate fills the profiled
    # cores, then these in order (pipeline/estimate/device_model.py)
    other_clusters: tuple[Cluster, ...] = ()

    def figures(self) -> dict[str, Figure]:
        """Every numeric figure of the profile by field name (NPU and energy not included)."""
        return {name: getattr(self, name) for name in DEVICE_FIGURES}

    def peak_gmac_s(self, precision: str = "fp32", threads: int = 1, i8mm: bool = False) -> float:
        """Peak GMAC/s for `threads` threads: min(threads, cores) x the per-core peak.

        precision "int8" uses the SDOT figure, or the SMMLA one with i8mm=True (an error where
        the core has none). Other clusters of the SoC are not counted (see devices.yaml).
        """
        if precision == "fp32":
            fig = self.peak_fp32_gmac_s
        elif precision == "int8":
            fig = self.peak_int8_i8mm_gmac_s if i8mm else self.peak_int8_gmac_s
        else:
            raise unknown("precision", precision, ("fp32", "int8"))
        if fig.value is None:
            raise DeviceProfileError(
                f"device {self.key!r} has no {precision}{' i8mm' if i8mm else ''} peak: "
                f"{fig.source}"
            )
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        return min(threads, int(self.cores.value)) * fig.value


def _where(path: Path, device: str | None = None, section: str | None = None) -> str:
    where = str(path)
    if section:
        where += f": {section}"
    if device:
        where += f": device {device!r}"
    return where


def _check_keys(raw: dict, allowed, required, where: str, what: str) -> None:
    if not isinstance(raw, dict):
        raise DeviceProfileError(f"{where}: {what} must be a mapping, got {type(raw).__name__}")
    for key in raw:
        if key not in allowed:
            raise DeviceProfileError(
                f"{where}: unknown key {key!r} in {what}; allowed: {', '.join(sorted(allowed))}"
            )
    for key in required:
        if key not in raw:
            raise DeviceProfileError(f"{where}: {what} is missing {key!r}")


def _text(raw: dict, key: str, where: str, required: bool = True) -> str:
    value = raw.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise DeviceProfileError(f"{where}: {key!r} must be a non-empty string")
    return value.strip()


def _figure(raw, name: str, where: str) -> Figure:
    what = f"figure {name!r}"
    _check_keys(raw, set(_FIGURE_REQUIRED) | set(_FIGURE_OPTIONAL), _FIGURE_REQUIRED, where, what)
    value, basis = raw["value"], raw["basis"]
    unit = raw["unit"]
    source = raw["source"]
    if not isinstance(unit, str) or not unit.strip():
        raise DeviceProfileError(f"{where}: {what} needs a non-empty unit")
    if not isinstance(source, str) or not source.strip():
        raise DeviceProfileError(f"{where}: {what} needs a non-empty source")
    if value is None:
        if basis not in NULL_BASES:
            raise DeviceProfileError(
                f"{where}: {what} is null, so its basis must be one of {', '.join(NULL_BASES)} "
                f"(saying why), got {basis!r}"
            )
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DeviceProfileError(
                f"{where}: {what} value must be a number or null, got {value!r}"
            )
        if not math.isfinite(value) or value <= 0:
            raise DeviceProfileError(f"{where}: {what} value must be positive, got {value!r}")
        if basis not in NUMERIC_BASES:
            raise DeviceProfileError(
                f"{where}: {what} basis must be one of {', '.join(NUMERIC_BASES)}, got {basis!r}"
            )
    instruction = raw.get("instruction")
    if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
        raise DeviceProfileError(f"{where}: {what} instruction must be a non-empty string")
    return Figure(
        value=None if value is None else float(value),
        unit=unit.strip(),
        basis=basis,
        source=" ".join(source.split()),
        instruction=instruction.strip() if instruction else None,
    )


def _energy_model(key: str, raw, path: Path) -> EnergyModel:
    where = _where(path, section=f"energy model {key!r}")
    _check_keys(raw, _ENERGY_KEYS, _ENERGY_KEYS, where, "energy model")
    figs = {name: _figure(raw[name], name, where) for name in ENERGY_FIGURES}
    for name, fig in figs.items():
        if fig.value is None:
            raise DeviceProfileError(f"{where}: {name!r} must have a value")
    return EnergyModel(
        key=key, description=" ".join(_text(raw, "description", where).split()), **figs
    )


def _derived_peak(name: str, figs: dict[str, Figure]) -> Figure:
    """A peak figure the profile left out: its per-cycle figure x clock_ghz."""
    per, clock = figs[_PEAK_OF[name]], figs["clock_ghz"]
    if per.value is None:
        return Figure(None, "GMAC/s", per.basis, f"no {_PEAK_OF[name]}: {per.source}")
    return Figure(
        per.value * clock.value,
        "GMAC/s",
        "derived",
        f"{_PEAK_OF[name]} {per.value:g} x clock_ghz {clock.value:g} = "
        f"{per.value * clock.value:.4g} GMAC/s per core",
        per.instruction,
    )


def _device_figures(raw: dict, where: str) -> dict[str, Figure]:
    figs = {
        name: _figure(raw[name], name, where)
        for name in DEVICE_FIGURES
        if name in raw or name not in _DERIVABLE
    }
    for name in _REQUIRED_NUMBERS:
        if name in figs and figs[name].value is None:
            raise DeviceProfileError(f"{where}: {name!r} must have a value (estimates need it)")
    for name in _DERIVABLE - set(figs):
        figs[name] = _derived_peak(name, figs)
    for name in _REQUIRED_NUMBERS:
        if figs[name].value is None:
            raise DeviceProfileError(f"{where}: {name!r} must have a value (estimates need it)")
    clock = figs["clock_ghz"].value
    for peak, per_cycle in _PEAK_OF.items():
        p, c = figs[peak].value, figs[per_cycle].value
        if (p is None) != (c is None):
            raise DeviceProfileError(
                f"{where}: {peak!r} and {per_cycle!r} must both be null or both set"
            )
        if p is not None and not math.isclose(p, c * clock, rel_tol=5e-3):
            raise DeviceProfileError(
                f"{where}: {peak!r} = {p} but {per_cycle!r} x clock_ghz = {c * clock:.4g}"
            )
    if figs["cores"].value != int(figs["cores"].value):
        raise DeviceProfileError(f"{where}: 'cores' must be a whole number")
    return figs


def _npu(raw, where: str) -> Npu | None:
    if raw is None:
        return None
    npu_where = f"{where}: npu"
    _check_keys(raw, _NPU_KEYS, _NPU_KEYS, where, "'npu'")
    return Npu(
        name=_text(raw, "name", npu_where),
        access=" ".join(_text(raw, "access", npu_where).split()),
        peak_tops=_figure(raw["peak_tops"], "npu.peak_tops", where),
    )


def _clusters(raw, cores: dict[str, CoreType], where: str) -> tuple[Cluster, ...]:
    """`other_clusters`: [{core: <key of the cores catalogue>, count, clock_ghz: figure}]."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise DeviceProfileError(f"{where}: 'other_clusters' must be a list of clusters")
    out = []
    for i, c in enumerate(raw):
        cw = f"{where}: other_clusters[{i}]"
        _check_keys(c, _CLUSTER_KEYS, _CLUSTER_KEYS, cw, "cluster")
        if c["core"] not in cores:
            raise DeviceProfileError(
                f"{cw}: core {c['core']!r} is not in the cores catalogue; "
                f"available: {', '.join(sorted(cores)) or '(none)'}"
            )
        n = c["count"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DeviceProfileError(f"{cw}: 'count' must be a whole number >= 1, got {n!r}")
        clock = _figure(c["clock_ghz"], "clock_ghz", cw)
        if clock.value is None:
            raise DeviceProfileError(f"{cw}: 'clock_ghz' must have a value")
        out.append(Cluster(cores[c["core"]], n, clock))
    return tuple(out)


def _device(
    key: str, raw, energy: dict[str, EnergyModel], cores: dict[str, CoreType], path: Path
) -> DeviceProfile:
    where = _where(path, device=key)
    required = (set(DEVICE_FIGURES) - _DERIVABLE) | set(_DEVICE_TEXT_REQUIRED) | {"core"}
    _check_keys(raw, _DEVICE_KEYS, sorted(required), where, "device profile")

    core = raw["core"]
    _check_keys(core, {"value", "source"}, ("value", "source"), where, "'core'")
    model_key = _text(raw, "energy_model", where)
    if model_key not in energy:
        raise DeviceProfileError(
            f"{where}: energy_model {model_key!r} is not defined; "
            f"available: {', '.join(sorted(energy)) or '(none)'}"
        )
    return DeviceProfile(
        key=key,
        name=_text(raw, "name", where),
        soc=_text(raw, "soc", where),
        core=_text(core, "value", f"{where}: core"),
        core_source=" ".join(_text(core, "source", f"{where}: core").split()),
        energy_model=energy[model_key],
        other_cores=_text(raw, "other_cores", where, required=False),
        notes=" ".join(_text(raw, "notes", where, required=False).split()),
        npu=_npu(raw.get("npu"), where),
        other_clusters=_clusters(raw.get("other_clusters"), cores, where),
        **_device_figures(raw, where),
    )


def _core_type(key: str, raw, path: Path) -> CoreType:
    where = _where(path, section=f"core {key!r}")
    _check_keys(raw, _CORE_KEYS, _CORE_KEYS, where, "core type")
    figs = {name: _figure(raw[name], name, where) for name in CORE_FIGURES}
    for name in CORE_FIGURES[:2]:
        if figs[name].value is None:
            raise DeviceProfileError(f"{where}: {name!r} must have a value")
    return CoreType(key=key, name=_text(raw, "name", where), **figs)


def load_devices(path: str | Path | None = None) -> dict[str, DeviceProfile]:
    """Load and validate device profiles from `path` (default: targets/devices.yaml)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DeviceProfileError(f"{path}: no such device profile file") from None
    except yaml.YAMLError as e:
        raise DeviceProfileError(f"{path}: not valid YAML: {e}") from None
    _check_keys(raw, {*_TOP_KEYS, *_TOP_OPTIONAL}, _TOP_KEYS, str(path), "the file")
    models_raw, devices_raw = raw["energy_models"], raw["devices"]
    for section, value in (("energy_models", models_raw), ("devices", devices_raw)):
        if not isinstance(value, dict) or not value:
            raise DeviceProfileError(f"{path}: {section!r} must be a non-empty mapping")
    energy = {key: _energy_model(key, m, path) for key, m in models_raw.items()}
    cores = {key: _core_type(key, c, path) for key, c in (raw.get("cores") or {}).items()}
    return {key: _device(key, d, energy, cores, path) for key, d in devices_raw.items()}


@cache
def _default() -> dict[str, DeviceProfile]:
    return load_devices(DEFAULT_PATH)


def _profiles(path: str | Path | None) -> dict[str, DeviceProfile]:
    return _default() if path is None else load_devices(path)


def get_device(name: str, path: str | Path | None = None) -> DeviceProfile:
    """The profile called `name`; an unknown name is a UsageError listing the known ones."""
    profiles = _profiles(path)
    if name not in profiles:
        raise unknown("device", name, profiles)
    return profiles[name]


def list_devices(path: str | Path | None = None) -> list[str]:
    return sorted(_profiles(path))


__all__ = [
    "DEFAULT_PATH",
    "Cluster",
    "CoreType",
    "DeviceProfile",
    "DeviceProfileError",
    "EnergyModel",
    "Figure",
    "Npu",
    "get_device",
    "list_devices",
    "load_devices",
]
