"""Models on disk without pickle: safetensors weights + a JSON description.

The JSON names the zoo model and its constructor arguments, and, for a pruned model, the
pruning plan (torch-pruning's history: which channels of which layer were removed, replayed
in order on a fresh model) plus module attributes that pruning changes (attention heads).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from ground.errors import SlimshipError
from models import create_from_spec, example_input, load_state
from pipeline.prune import apply_plan
from pipeline.rundir import write_bytes, write_json


def save_model(folder: Path, model: nn.Module, spec: dict, plan: dict | None = None) -> None:
    """Write model.safetensors and model.json into folder (atomically, each)."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_bytes(folder / "model.safetensors", save(state))
    write_json(folder / "model.json", {"spec": spec, "plan": plan})


def save_weights(path: Path, model: nn.Module) -> None:
    """Weights alone (safetensors), e.g. the initial weights a lottery ticket rewinds to, under
    the plain module's names (a parametrized weight, e.g. while dropout training, is saved as
    `weight`, its unparametrized original)."""
    state = {
        k.replace(".parametrizations.weight.original", ".weight"): v.detach().contiguous().clone()
        for k, v in model.state_dict().items()
    }
    write_bytes(path, save(state))


def load_weights_file(path: Path) -> dict:
    return load_file(str(path))


def check_finite(model: nn.Module, where: str) -> None:
    """NaN/Inf in weights or buffers stop the run, naming the stage and the tensor."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise SlimshipError(
                f"{where}: tensor {name} has {bad} NaN/Inf values of {t.numel()}; "
                "nothing after this stage was run"
            )


def build_model(spec: dict, plan: dict | None) -> nn.Module:
    """A fresh zoo model with the plan's structure (weights are not loaded)."""
    model = create_from_spec(spec)
    if plan:
        apply_plan(model, plan, example_input(spec))
    return model.eval()


def load_model(folder: Path) -> tuple[nn.Module, dict, dict | None]:
    desc = json.loads((Path(folder) / "model.json").read_text())
    model = build_model(desc["spec"], desc["plan"])
    load_state(model, load_file(str(Path(folder) / "model.safetensors")))
    return model.eval(), desc["spec"], desc["plan"]
