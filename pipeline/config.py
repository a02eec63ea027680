"""The recipe: declared data. YAML is read with safe_load, unknown keys and wrong types are
errors that name the key, and the resolved recipe is written next to the outputs."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ground.errors import UsageError, short
from pipeline.yamlfile import parse_yaml, read_yaml_file

MAX_INT = 10**9  # bigger integers are typos (epochs, images, runs), not settings
IMPORTANCES = ("l1", "l2", "bn_scale", "taylor", "hessian", "random")
PRUNE_TARGETS = ("macs", "params", "channels", "latency")
PRUNE_SCOPES = ("local", "global")
LATENCY_WEIGHINGS = ("macs", "divergence")  # a latency step's cost (prune/sensitivity.py)


@dataclass(frozen=True)
class TrainConfig:
    """The dense teacher's training, and the sparsity-training options that make pruning it
    cheaper (they apply here and to the fine-tuning between iterative pruning steps)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.003
    weight_decay: float = 0.0005
    # group lasso over torch-pruning's channel groups (Wen et al. 2016): + lambda * sum ||W_g||_2
    group_lasso: float = 0.0
    # L1 on batch-norm scales (network slimming, Liu et al. 2017): + lambda * sum |gamma|
    bn_l1: float = 0.0
    # targeted dropout (Gomez et al. 2019): each step, the `targeted_fraction` lowest-L2 output
    # channels of every conv/linear layer are dropped with this probability
    targeted_dropout: float = 0.0
    targeted_fraction: float = 0.5
    # the control: output channels dropped with this probability, whatever their magnitude
    dropout: float = 0.0

    def check(self):
        _positive("train.epochs", self.epochs)
        _positive("train.batch_size", self.batch_size)
        _positive("train.lr", self.lr)
        for key in ("group_lasso", "bn_l1"):
            if getattr(self, key) < 0:
                raise UsageError(f"recipe key train.{key} must be >= 0, got {getattr(self, key)}")
        for key in ("targeted_dropout", "dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise UsageError(
                    f"recipe key train.{key} must be in [0, 1), got {getattr(self, key)}"
                )
        if not 0 < self.targeted_fraction <= 1:
            raise UsageError(
                f"recipe key train.targeted_fraction must be in (0, 1], "
                f"got {self.targeted_fraction}"
            )
        if self.targeted_dropout and self.dropout:
            raise UsageError(
                "recipe keys train.targeted_dropout and train.dropout: choose one "
                "(dropout is the untargeted control)"
            )


@dataclass(frozen=True)
class PruneConfig:
    # keep at most this fraction of the dense model's MACs (structured channel pruning)
    macs_fraction: float = 0.5
    importance: str = "l2"
    round_to: int | None = None  # None: what the target's backends want
    ignored_layers: tuple[str, ...] = ()
    # what the kept fraction is a fraction of: "macs", "params", "channels" (conv/linear
    # output channels, classifier and ignored layers excepted) or "latency" (measured)
    target: str = "macs"
    fraction: float | None = None  # kept fraction of `target`; None: macs_fraction
    # target latency: "3ms@pixel-8" asks for ms estimated on a device profile, not a fraction
    latency_target: str | None = None
    # "local": per-layer widths fitted to the target, layers shrink about evenly;
    # "global": one importance ranking over all layers (no layer below 10 %)
    scope: str = "local"
    # attention heads removed per layer; None: chosen with the channels to meet the target
    head_pruning_ratio: float | None = None
    # no channel group is cut below this fraction of its width (nor below one round_to
    # multiple where it is wider), so a few frozen groups cannot push the cut onto a few others
    min_width: float = 0.25
    # 1: one-shot; n > 1: prune -> fine-tune n times on a cubic schedule (Zhu & Gupta 2017)
    iterative_steps: int = 1
    # fine-tuning epochs after each iterative step but the last; None: sized to the data
    finetune_epochs: int | None = None
    # lottery-ticket rewinding (Frankle & Carbin): None off; 0 resets the surviving weights to
    # their initial values, k > 0 to their values after k training epochs, then retrain
    rewind_epoch: int | None = None
    # unstructured global magnitude sparsity of conv/linear weights after channel pruning
    # (0: off); real zeros, but no speed-up on dense kernels
    sparsity: float = 0.0
    # a latency target may also remove residual blocks whole (at most 1 - min_width of them)
    remove_blocks: bool = True
    # a latency step's cost: the share of MACs it removes, or the outputs' divergence
    latency_weighing: str = "macs"

    @property
    def kept_fraction(self) -> float:
        return self.macs_fraction if self.fraction is None else self.fraction

    def check(self):
        if not 0 < self.macs_fraction <= 1:
            raise UsageError(
                f"recipe key prune.macs_fraction must be in (0, 1], got {self.macs_fraction}"
            )
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise UsageError(f"recipe key prune.fraction must be in (0, 1], got {self.fraction}")
        if not 0 < self.min_width <= 1:
            raise UsageError(f"recipe key prune.min_width must be in (0, 1], got {self.min_width}")
        for key, known in (
            ("importance", IMPORTANCES),
            ("target", PRUNE_TARGETS),
            ("scope", PRUNE_SCOPES),
            ("latency_weighing", LATENCY_WEIGHINGS),
        ):
            if getattr(self, key) not in known:
                raise UsageError(
                    f"recipe key prune.{key}: unknown {getattr(self, key)!r}; "
                    f"available: {', '.join(known)}"
                )
        if self.round_to is not None:
            _positive("prune.round_to", self.round_to)
        if self.head_pruning_ratio is not None and not 0 <= self.head_pruning_ratio < 1:
            raise UsageError(
                f"recipe key prune.head_pruning_ratio must be in [0, 1), "
                f"got {self.head_pruning_ratio}"
            )
        _positive("prune.iterative_steps", self.iterative_steps)
        for key in ("finetune_epochs", "rewind_epoch"):
            if (v := getattr(self, key)) is not None and v < 0:
                raise UsageError(f"recipe key prune.{key} must be >= 0, got {v}")
        if self.latency_target is not None:  # the stage estimates it: check it before any work
            from pipeline.prune.device_latency import parse_device_target

            parse_device_target(self.latency_target, self.target)
        if not 0 <= self.sparsity < 1:
            raise UsageError(f"recipe key prune.sparsity must be in [0, 1), got {self.sparsity}")


@dataclass(frozen=True)
class DistillConfig:
    """Hinton et al. 2015: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE."""

    epochs: int | None = None  # None: sized to the training split (pipeline/sized_epochs.py)
    batch_size: int = 64
    lr: float = 0.002
    temperature: float = 4.0
    alpha: float = 0.7
    # the teacher: None is the dense model of the train stage; or a zoo model (or
    # path/to/file.py:factory) with trained weights in `teacher_weights` (.safetensors)
    teacher_model: str | None = None
    teacher_weights: str | None = None
    # the student: None is the pruned model; or a zoo architecture trained from scratch by KD
    # (the prune stage then builds it instead of pruning)
    student_model: str | None = None
    # feature distillation (FitNets-style hints): + weight * MSE(adapter(student feature),
    # teacher feature) at `feature_layers` ("student_layer" or "student_layer:teacher_layer";
    # empty: the last conv layer), through 1x1 adapters trained alongside and then discarded
    feature_weight: float = 0.0
    feature_layers: tuple[str, ...] = ()

    def check(self):
        if self.epochs is not None:
            _positive("distill.epochs", self.epochs)
        _positive("distill.batch_size", self.batch_size)
        _positive("distill.lr", self.lr)
        _positive("distill.temperature", self.temperature)
        if not 0 <= self.alpha <= 1:
            raise UsageError(f"recipe key distill.alpha must be in [0, 1], got {self.alpha}")
        if (self.teacher_model is None) != (self.teacher_weights is None):
            raise UsageError(
                "recipe keys distill.teacher_model and distill.teacher_weights go "
                "together: a zoo teacher needs its trained weights"
            )
        if self.feature_weight < 0:
            raise UsageError(
                f"recipe key distill.feature_weight must be >= 0, got {self.feature_weight}"
            )
        for spec in self.feature_layers:
            if not spec or spec.count(":") > 1 or any(not p for p in spec.split(":")):
                raise UsageError(
                    f"recipe key distill.feature_layers: {spec!r} is not "
                    "'student_layer' or 'student_layer:teacher_layer'"
                )


@dataclass(frozen=True)
class QuantizeConfig:
    calibration_images: int = 256  # drawn from the training split, never the test split
    # per backend, the scheme instead of the target's (e.g. {coreml: palettize6, onnx: fp32});
    # each backend lists its own (`cli.py targets`); checked against the target before any work
    precision: dict[str, str] = field(default_factory=dict)
    # ExecuTorch int8: epochs of quantization-aware training (PT2E QAT with KD from the
    # teacher, on the training split) before conversion; 0: post-training quantization only
    qat_epochs: int = 0
    qat_lr: float = 0.0002  # QAT fine-tunes a trained student: a small learning rate

    def check(self):
        _positive("quantize.calibration_images", self.calibration_images)
        if self.qat_epochs < 0:
            raise UsageError(f"recipe key quantize.qat_epochs must be >= 0, got {self.qat_epochs}")
        _positive("quantize.qat_lr", self.qat_lr)


@dataclass(frozen=True)
class CalibrateConfig:
    """Temperature scaling (Guo et al. 2017) fitted on the held-out validation split and folded
    into the classifier. `apply: always` (the default) folds the fitted T; `fitted` folds it only
    where cross-validation inside the validation split says it lowers NLL (otherwise T = 1)."""

    temperature_scaling: bool = True
    apply: str = "always"
    bins: int = 15

    def check(self):
        if self.apply not in ("fitted", "always"):
            raise UsageError(
                f"recipe key calibrate.apply must be always or fitted, got {self.apply!r}"
            )
        _positive("calibrate.bins", self.bins)


@dataclass(frozen=True)
class ProfileConfig:
    warmup: int = 5
    runs: int = 50
    threads: tuple[int, ...] = (1,)

    def check(self):
        if self.runs < 20:
            raise UsageError(f"recipe key profile.runs must be at least 20, got {self.runs}")
        if not self.threads:
            raise UsageError("recipe key profile.threads must list at least one thread count")
        for t in self.threads:
            _positive("profile.threads", t)


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation (pipeline/augment.py); off by default."""

    flip: bool = False  # random horizontal flip, p = 0.5
    pad_crop: int = 0  # pad by this many pixels (black), crop back at a random offset; 0: off
    # random-resized-crop: a box of this fraction of the image area up to all of it, aspect
    # 3/4..4/3, resized to the input size (torchvision's scale=(f, 1); 0.08 is ImageNet's); 0: off
    resized_crop: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.flip or self.pad_crop > 0 or self.resized_crop > 0

    def check(self):
        if not 0 <= self.pad_crop <= 64:
            raise UsageError(f"recipe key augment.pad_crop must be in 0..64, got {self.pad_crop}")
        if not 0 <= self.resized_crop <= 1:
            raise UsageError(
                f"recipe key augment.resized_crop must be in 0..1 (the smallest crop's share "
                f"of the image area; 0 turns it off), got {self.resized_crop}"
            )


@dataclass(frozen=True)
class Recipe:
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def check(self) -> Recipe:
        for f in dataclasses.fields(self):
            getattr(self, f.name).check()
        if self.distill.student_model is not None:
            p = self.prune
            for key, on in (
                ("iterative_steps", p.iterative_steps != 1),
                ("rewind_epoch", p.rewind_epoch is not None),
                ("sparsity", p.sparsity != 0),
            ):
                if on:
                    raise UsageError(
                        f"recipe key prune.{key}: the student is another "
                        "architecture (distill.student_model), which is not "
                        "pruned; drop one of the two"
                    )
        k = self.prune.rewind_epoch
        if k is not None and k > self.train.epochs:
            raise UsageError(
                f"recipe key prune.rewind_epoch is {k}, after the last training "
                f"epoch (train.epochs {self.train.epochs}); use 0..{self.train.epochs}"
            )
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _positive(key: str, value):
    if value <= 0:
        raise UsageError(f"recipe key {key} must be > 0, got {value}")


def parse_setting(text: str) -> tuple[str, object]:
    """'section.key=value' from --set; the value is read as YAML (2, 0.5, true, [a, b], l2)."""
    key, sep, raw = text.partition("=")
    if not sep or key.count(".") != 1 or not all(key.split(".")):
        raise UsageError(
            f"--set {short(text)}: expected section.key=value, e.g. prune.scope=global"
        )
    value = parse_yaml(raw, f"--set {short(text)}")
    if value is None:
        raise UsageError(f"--set {short(text)}: no value given")
    return key, value


def load_recipe(path: str | Path | None, overrides: dict | None = None) -> Recipe:
    """Defaults, then the YAML file, then CLI overrides given as {"section.key": value}."""
    data: dict = {}
    if path is not None:
        data = read_yaml_file(path, "--config") or {}
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


def from_dict(cls, data, prefix: str, what: str = "recipe"):
    """Build a frozen dataclass from plain data; unknown keys and wrong types name the key."""
    if not isinstance(data, dict):
        raise UsageError(
            f"{what} key {prefix.rstrip('.') or '<root>'} must be a mapping, "
            f"got {type(data).__name__}"
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise UsageError(
                f"{what} key {prefix}{key} is unknown; known: {', '.join(sorted(names))}"
            )
    return cls(**{k: _coerce(hints[k], v, f"{prefix}{k}", what) for k, v in data.items()})


def _coerce(tp, value, key, what="recipe"):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".", what)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = next(a for a in args if a is not type(None))
        return _coerce(inner, value, key, what)
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{what} key {key} must be a mapping, got {type(value).__name__}")
        return {
            _coerce(args[0], k, f"{key}.{k}", what): _coerce(args[1], v, f"{key}.{k}", what)
            for k, v in value.items()
        }
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{what} key {key} must be a list, got {type(value).__name__}")
        return tuple(_coerce(args[0], v, f"{key}[{i}]", what) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{what} key {key} must be true or false, got {short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_INT:
            raise UsageError(
                f"{what} key {key} must be an integer of at most {MAX_INT:,}, got {short(value)}"
            )
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{what} key {key} must be a number, got {short(value)}")
        if not math.isfinite(value) or abs(value) > 1e300:
            raise UsageError(f"{what} key {key} must be a finite number, got {short(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UsageError(f"{what} key {key} must be a string, got {short(value)}")
        return value
    raise TypeError(f"unsupported recipe type {tp} for {key}")
