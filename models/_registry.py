"""Model registry: `@register_model` on a factory fills a dict; `list_models()` reads it.

Each entry carries its input spec next to the factory, the way timm keeps preprocessing with
the weights: an app team needs the input shape and layout as much as the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ground.errors import unknown


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]  # factory(in_channels, num_classes, input_size) -> module
    description: str
    # channel/width multiples the architecture is designed around; pruning rounds to these
    round_to: int = 8


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, description: str, round_to: int = 8):
    def wrap(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = ModelEntry(name, fn, description, round_to)
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def _source(name: str):
    """The module that builds models outside the zoo which claims `name`, or None."""
    from models import _hub, _user

    return next((s for s in (_user, _hub) if s.claims(name)), None)


def get_model_entry(name: str) -> ModelEntry:
    """The zoo entry; for a user file or a library architecture, one made after checking that
    it exists (a missing file, factory or architecture fails here, before any work)."""
    source = _source(name)
    if source is not None:
        source.check(name)
        return ModelEntry(name, None, source.DESCRIPTION, 8)
    if name not in _MODELS:
        raise unknown("model", name, _MODELS)
    return _MODELS[name]


def create_model(name: str, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    """A zoo model by name, a user model given as `path/to/file.py:factory`, or a library
    architecture given as `torchvision:NAME` or `timm:NAME`."""
    source = _source(name)
    if source is not None:
        return source.create(name, in_channels, num_classes, input_size)
    return get_model_entry(name).factory(
        in_channels=in_channels, num_classes=num_classes, input_size=input_size
    )


def create_from_spec(spec: dict) -> nn.Module:
    """The model a spec (name, in_channels, num_classes, input_size) describes, in eval mode."""
    return create_model(
        spec["name"], spec["in_channels"], spec["num_classes"], spec["input_size"]
    ).eval()


def example_input(spec: dict) -> torch.Tensor:
    return torch.zeros(1, *spec["input_shape"])  # (1, C, H, W)


def load_state(model: nn.Module, state: dict) -> None:
    """load_state_dict with the module versions the model itself records: a safetensors file
    keeps none, and some modules (torchvision's MNASNet) refuse a state without theirs."""
    full = model.state_dict()
    state = type(full)(state)
    state._metadata = full._metadata
    model.load_state_dict(state)
