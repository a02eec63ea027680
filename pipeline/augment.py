"""Training-time augmentation, as the common CIFAR/ImageNet recipes do it: a random horizontal
flip, pad-and-crop (pad by p pixels with black, crop back at a random offset) and random-
resized-crop (torchvision's RandomResizedCrop), per image, on the preprocessed batch. Applied only to training batches (train, fine-tune, distill, QAT),
never to validation, test, calibration or golden inputs."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

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
        if cfg.resized_crop:
            x = _resized_crop(x, cfg.resized_crop)
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


def _resized_crop(x: torch.Tensor, min_area: float) -> torch.Tensor:
    """RandomResizedCrop(scale=(min_area, 1), ratio=(3/4, 4/3)), bilinear, all images at once:
    area fraction uniform, aspect ratio log-uniform, as torchvision draws them. Where the box
    does not fit, torchvision draws again (up to 10 times); here its sides are clipped to the
    image instead, which keeps the batch in one step and changes only boxes near full size."""
    b, _, h, w = x.shape
    area = torch.empty(b).uniform_(min_area, 1.0)
    ratio = torch.exp(torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3)))
    sx = torch.sqrt(area * ratio * h / w).clamp(max=1.0)  # crop width / image width
    sy = torch.sqrt(area / ratio * w / h).clamp(max=1.0)
    cx = (torch.rand(b) * 2 - 1) * (1 - sx)  # centre, in [-1, 1] image coordinates
    cy = (torch.rand(b) * 2 - 1) * (1 - sy)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sy, cy
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
