"""Models from outside the zoo: `path/to/file.py:factory`, and their weights.

Weights load without pickle: safetensors, or `.pt`/`.pth` through `torch.load(weights_only=True)`
(which refuses any object that is not a tensor or plain container). Anything else, or a
checkpoint that weights_only refuses, needs `--trust-pickle`, and the manifest records it.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

import torch
from torch import nn

from ground.errors import UsageError

SAFE_SUFFIXES = (".safetensors", ".pt", ".pth")


def is_user_model(name: str) -> bool:
    return ":" in name and name.rsplit(":", 1)[0].endswith(".py")


def user_factory(name: str):
    path, _, attr = name.rpartition(":")
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--model {name}: no such file {path}")
    spec = importlib.util.spec_from_file_location(f"slimship_user_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)  # the user's own code: running it is the point
    except Exception as e:  # noqa: BLE001  (whatever the user's module raises)
        raise UsageError(
            f"--model {name}: importing {path} failed: {type(e).__name__}: {e}"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"--model {name}: {path} has no callable {attr!r}")
    return factory


def create_user_model(name: str, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    """Call the factory with whichever of in_channels/num_classes/input_size it accepts."""
    factory = user_factory(name)
    offered = {"in_channels": in_channels, "num_classes": num_classes, "input_size": input_size}
    params = inspect.signature(factory).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    model = factory(**{k: v for k, v in offered.items() if takes_all or k in params})
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"--model {name}: the factory returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def load_weights(path: str | Path, trust_pickle: bool = False) -> tuple[dict, str]:
    """(state dict, how it was loaded). Never unpickles unless trust_pickle is given."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--weights {path}: no such file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p)), "safetensors"
        except Exception as e:  # noqa: BLE001  (safetensors raises several types)
            raise UsageError(f"--weights {path}: not a readable safetensors file ({e})") from None
    if p.suffix in (".pt", ".pth"):
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
            how = "torch.load(weights_only=True)"
        except Exception as e:  # noqa: BLE001  (the unpickler raises several types)
            if not trust_pickle:
                raise UsageError(
                    f"--weights {path}: refused: it holds objects beyond tensors that only "
                    f"unpickling would create ({type(e).__name__}); convert it to safetensors, "
                    "or pass --trust-pickle if you trust its author"
                ) from None
            state, how = _unpickle(p), "torch.load(weights_only=False) under --trust-pickle"
    elif trust_pickle:
        state, how = _unpickle(p), "torch.load(weights_only=False) under --trust-pickle"
    else:
        raise UsageError(
            f"--weights {path}: refused: {p.suffix or 'no suffix'} is not "
            f"{', '.join(SAFE_SUFFIXES)}; loading it means unpickling, which can run "
            "code: convert it to safetensors, or pass --trust-pickle"
        )
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"--weights {path}: not a state dict of tensors")
    return state, how


def _unpickle(p: Path):
    try:
        return torch.load(p, map_location="cpu", weights_only=False)  # --trust-pickle only
    except Exception as e:  # noqa: BLE001  (EOFError on an empty file, UnpicklingError, ...)
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise UsageError(
            f"--weights {p}: not a readable checkpoint ({type(e).__name__}: {first})"
        ) from None


# the model-source interface models/_registry.py asks (see models/_hub.py for the other)
DESCRIPTION = "user model"
claims = is_user_model
check = user_factory
create = create_user_model
