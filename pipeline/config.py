"""The recipe: declared data. YAML is read with safe_load, unknown keys and wrong types are
errors that name the key, and the resolved recipe is written next to the outputs."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.errors import UsageError

IMPORTANCES = ("l1", "l2", "bn_scale", "taylor", "hessian", "random")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.003
    weight_decay: float = 0.0005

    def check(self):
        _positive("train.epochs", self.epochs)
        _positive("train.batch_size", self.batch_size)
        _positive("train.lr", self.lr)


@dataclass(frozen=True)
class PruneConfig:
    # keep at most this fraction of the dense model's MACs (structured channel pruning)
    macs_fraction: float = 0.5
    importance: str = "l2"
    round_to: int | None = None  # None: what the target's backends want
    ignored_layers: tuple[str, ...] = ()

    def check(self):
        if not 0 < self.macs_fraction <= 1:
            raise UsageError(f"recipe key prune.macs_fraction must be in (0, 1], "
                             f"got {self.macs_fraction}")
        if self.importance not in IMPORTANCES:
            raise UsageError(f"recipe key prune.importance: unknown {self.importance!r}; "
                             f"available: {', '.join(IMPORTANCES)}")
        if self.round_to is not None:
            _positive("prune.round_to", self.round_to)


@dataclass(frozen=True)
class DistillConfig:
    """Hinton et al. 2015: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.002
    temperature: float = 4.0
    alpha: float = 0.7

    def check(self):
        _positive("distill.epochs", self.epochs)
        _positive("distill.batch_size", self.batch_size)
        _positive("distill.lr", self.lr)
        _positive("distill.temperature", self.temperature)
        if not 0 <= self.alpha <= 1:
            raise UsageError(f"recipe key distill.alpha must be in [0, 1], got {self.alpha}")


@dataclass(frozen=True)
class QuantizeConfig:
    calibration_images: int = 256  # drawn from the training split, never the test split

    def check(self):
        _positive("quantize.calibration_images", self.calibration_images)


@dataclass(frozen=True)
class ProfileConfig:
    warmup: int = 5
    runs: int = 50
    threads: tuple[int, ...] = (1,)

    def check(self):
        _positive("profile.runs", self.runs)
        if self.runs < 20:
            raise UsageError(f"recipe key profile.runs must be at least 20, got {self.runs}")
        for t in self.threads:
            _positive("profile.threads", t)


@dataclass(frozen=True)
class Recipe:
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)

    def check(self) -> "Recipe":
        for f in dataclasses.fields(self):
            getattr(self, f.name).check()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _positive(key: str, value):
    if value <= 0:
        raise UsageError(f"recipe key {key} must be > 0, got {value}")


def load_recipe(path: str | Path | None, overrides: dict | None = None) -> Recipe:
    """Defaults, then the YAML file, then CLI overrides given as {"section.key": value}."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"--config {path}: no such file")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UsageError(f"--config {path}: the recipe must be a mapping of sections")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".")
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise UsageError(f"recipe key {section} must be a mapping")
        data[section][key] = value
    return from_dict(Recipe, data, "").check()


def from_dict(cls, data, prefix: str):
    """Build a frozen dataclass from plain data; unknown keys and wrong types name the key."""
    if not isinstance(data, dict):
        raise UsageError(f"recipe key {prefix.rstrip('.') or '<root>'} must be a mapping, "
                         f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise UsageError(f"recipe key {prefix}{key} is unknown; "
                             f"known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(tp, value, key):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(inner, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"recipe key {key} must be a list, got {type(value).__name__}")
        return tuple(_coerce(args[0], v, key) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise UsageError(f"recipe key {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"recipe key {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"recipe key {key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UsageError(f"recipe key {key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported recipe type {tp} for {key}")
