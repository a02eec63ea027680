"""Registries: backends (code, one module each) and targets (data, from targets.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ground.errors import unknown

_BACKENDS: dict = {}


def register_backend(cls):
    """Class decorator: one instance per backend, looked up by its `name`."""
    inst = cls()
    if inst.name in _BACKENDS:
        raise ValueError(f"backend {inst.name!r} registered twice")
    _BACKENDS[inst.name] = inst
    return cls


def get_backend(name: str):
    if name not in _BACKENDS:
        raise unknown("backend", name, _BACKENDS)
    return _BACKENDS[name]


def list_backends() -> list[str]:
    return sorted(_BACKENDS)


def backends_by_suffix() -> dict:
    """File suffix (of each backend's `filename`) -> backend, in registration order."""
    return {Path(b.filename).suffix: b for b in _BACKENDS.values()}


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    precision: str
    options: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    backends: tuple[BackendChoice, ...]
    round_to: int  # channel multiple the target's kernels run fastest with
    devices: tuple[str, ...]  # device profiles estimates are made for


def _load_targets() -> dict[str, Target]:
    raw = yaml.safe_load((Path(__file__).parent / "targets.yaml").read_text())
    out = {}
    for name, t in raw.items():
        choices = tuple(
            BackendChoice(
                b["backend"], b["precision"], tuple(sorted((b.get("options") or {}).items()))
            )
            for b in t["backends"]
        )
        out[name] = Target(
            name, t["description"], choices, int(t["round_to"]), tuple(t.get("devices") or ())
        )
    return out


_TARGETS = _load_targets()


def get_target(name: str) -> Target:
    if name not in _TARGETS:
        raise unknown("target", name, _TARGETS)
    return _TARGETS[name]


def list_targets() -> list[str]:
    return sorted(_TARGETS)
