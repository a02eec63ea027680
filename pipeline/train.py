"""The training loop shared by train, fine-tune and distill, and evaluation helpers."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from pipeline import faults

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits (N, classes) of `model` in eval mode."""
    model.eval()
    out = [model(torch.from_numpy(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def cross_entropy(logits, y, _x):
    return F.cross_entropy(logits, y)


def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    seed: int = 0,
    desc: str = "train",
    loss_fn: LossFn = cross_entropy,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> list[float]:
    """AdamW with a one-cycle schedule; returns the mean loss of each epoch.

    on_epoch(epoch, model) runs after each epoch (1-based), e.g. to keep a rewind snapshot."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps_per_epoch = max(1, -(-len(xt) // batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    history = []
    bar = tqdm(range(epochs), desc=desc, unit="epoch", leave=False, dynamic_ncols=True)
    for _ in bar:
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), batch_size):
            idx = perm[i : i + batch_size]
            xb, yb = xt[idx], yt[idx]
            loss = loss_fn(model(xb), yb, xb)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} at epoch {len(history)+1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append(total / len(xt))
        if on_epoch is not None:
            on_epoch(len(history), model)
        faults.point(f"{desc}:epoch{len(history)}")
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    bar.close()
    model.eval()
    return history
