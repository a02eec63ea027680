"""Training-time augmentation, as the common CIFAR/ImageNet recipes do it: a random horizontal
flip and pad-and-crop (pad by p pixels with black, crop back at a random offset), per image,
on the preprocessed batch. Applied only to training batches (train, fine-tune, distill, QAT),
never to validation, test, calibration or golden inputs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Augment = Callable[[torch.Tensor], torch.Tensor]


def for_training(cfg, preprocessing) -> Augment | None:
    """The batch transform a recipe's `augment` section asks for; None when it asks for none."""
    if not cfg.enabled:
        return None
    # black (raw 0) in model-input units, per channel: what zero padding of the image gives
    black = -np.asarray(preprocessing.mean, np.float32) / np.asarray(preprocessing.std, np.float32)

    def augment(x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        if cfg.flip:
            flip = torch.rand(len(x), device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if cfg.pad_crop:
            x = _pad_crop(x, cfg.pad_crop, torch.from_numpy(black).to(x))
        return x

    return augment


def _pad_crop(x: torch.Tensor, p: int, fill: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    padded = fill[None, :, None, None].expand(b, c, h + 2 * p, w + 2 * p).clone()
    padded[:, :, p : p + h, p : p + w] = x
    dy, dx = (torch.randint(0, 2 * p + 1, (b,)) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, c, h, w + 2 * p)
    cropped = padded.gather(2, rows.to(x.device))
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, c, h, w)
    return cropped.gather(3, cols.to(x.device))
