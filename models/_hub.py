"""Architectures from the torchvision and timm libraries: `torchvision:NAME`, `timm:NAME`.

Built with random weights and the classifier head sized to the dataset's classes (no hub
download: a team's trained weights come with `--weights`). Both libraries are imported only
when such a model is asked for: they are large and the zoo does not need them.
"""

from __future__ import annotations

import difflib

from torch import nn

from ground.errors import UsageError

PREFIXES = ("torchvision:", "timm:")
DESCRIPTION = "architecture from the torchvision or timm library"


def claims(name: str) -> bool:
    return name.startswith(PREFIXES)


def check(name: str) -> None:
    """An unknown architecture fails before any work, with the names the library has."""
    library, arch = name.split(":", 1)
    available = _names(library)
    if arch not in available:
        close = difflib.get_close_matches(arch, available, n=5, cutoff=0.5)
        raise UsageError(
            f"--model {name}: {library} has no architecture {arch!r}"
            + (f"; close: {', '.join(close)}" if close else "")
            + f" ({len(available)} in all: {library}'s list_models())"
        )


def create(name: str, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    library, arch = name.split(":", 1)
    check(name)
    if library == "torchvision":
        return _torchvision(arch, in_channels, num_classes)
    return _timm(arch, in_channels, num_classes, input_size)


def _names(library: str) -> list[str]:
    if library == "torchvision":
        import torchvision

        return torchvision.models.list_models(module=torchvision.models)
    import timm

    return timm.list_models()


def _torchvision(arch: str, in_channels: int, num_classes: int) -> nn.Module:
    import torchvision

    if in_channels != 3:
        raise UsageError(
            f"--model torchvision:{arch}: torchvision's classifiers take 3-channel (RGB) "
            f"images, the data has {in_channels}; use RGB data or a timm model (in_chans)"
        )
    extra = {"aux_logits": False} if arch in _AUXILIARY_HEADS else {}
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **extra)


# torchvision builds these with auxiliary classifiers by default; in training mode they return
# a named tuple of logits, which no training loop here expects (the heads help ImageNet training)
_AUXILIARY_HEADS = {"googlenet", "inception_v3"}


def _timm(arch: str, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    import timm

    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    try:  # vision transformers fix their patch grid from img_size; convnets refuse it
        return timm.create_model(arch, img_size=input_size, **kwargs)
    except TypeError:
        return timm.create_model(arch, **kwargs)
