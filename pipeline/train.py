"""The training loop shared by train, fine-tune and distill, and evaluation helpers."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ground import faults
from pipeline import distributed

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
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[float]:
    """AdamW with a one-cycle schedule; returns the mean loss of each epoch.

    on_epoch(epoch, model) runs after each epoch (1-based), e.g. to keep a rewind snapshot.
    augment, if given, transforms each training batch before the forward pass.

    Under torch.distributed every rank calls fit with the same arguments (pipeline/distributed.py):
    the model is wrapped in DistributedDataParallel (gradients averaged over ranks), each epoch's
    order is split between the ranks as DistributedSampler does, `batch_size` is the global
    batch (each rank takes ceil(batch_size / world) of it, so a recipe optimises the same way on
    any number of processes), the returned losses are averaged over ranks, and every rank returns
    the same weights. loss_fn gets batches on the training device.
    """
    torch.manual_seed(seed)
    yt = torch.from_numpy(y)
    world = distributed.active_world()
    order, per_rank = _epoch_order(len(yt), seed, world)
    local_batch = -(-batch_size // world)  # ceil: 64 on 3 ranks is 3 x 22
    steps_per_epoch = max(1, -(-per_rank // local_batch))
    dev = distributed.device()
    model.to(dev)
    net = distributed.wrap(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    history = []
    show = {"leave": False, "dynamic_ncols": True, "disable": not distributed.is_main()}
    bar = tqdm(range(epochs), desc=desc, unit="epoch", **show)
    for epoch in bar:
        net.train()
        batches = _batches(order(epoch), x, yt, local_batch, augment)
        total, seen = _epoch(net, batches, loss_fn, opt, sched, desc, epoch + 1)
        if world > 1:
            sums = distributed.all_reduce_sum(torch.tensor([total, seen], dtype=torch.float64))
            total, seen = sums.tolist()
        history.append(total / seen)
        if on_epoch is not None:
            on_epoch(len(history), model)
        faults.point(f"{desc}:epoch{len(history)}")
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    bar.close()
    distributed.sync_buffers(model)
    model.to("cpu")
    model.eval()
    return history


def _epoch_order(n: int, seed: int, world: int):
    """(order(epoch) -> this rank's indices for that epoch, images per rank)."""
    if world == 1:
        gen = torch.Generator().manual_seed(seed)
        return (lambda epoch: torch.randperm(n, generator=gen)), n
    return _sharded_order(n, seed), -(-n // world)


def _batches(perm, x, yt, local_batch: int, augment=None):
    dev = distributed.device()
    chunks = _Chunks(x, yt, [perm[i : i + local_batch] for i in range(0, len(perm), local_batch)])
    for xb, yb in _loader(chunks):
        xb = xb.to(dev)
        yield (augment(xb) if augment else xb), yb.to(dev)


class _Chunks(torch.utils.data.Dataset):
    """Batch i of an epoch: the rows chunks[i] of x (an ndarray, or a LazyRows that decodes
    them) and of y."""

    def __init__(self, x, yt, chunks):
        self.x, self.yt, self.chunks = x, yt, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i):
        idx = self.chunks[i]
        return torch.from_numpy(self.x[idx.numpy()]), self.yt[idx]


def _loader(chunks: _Chunks):
    """In-memory rows are sliced in this process; rows made on demand (image files) are made
    by worker processes, a few batches ahead of training."""
    if isinstance(chunks.x, np.ndarray):
        return (chunks[i] for i in range(len(chunks)))
    return torch.utils.data.DataLoader(
        chunks, batch_size=None, num_workers=loader_workers(), prefetch_factor=4
    )


def loader_workers() -> int:
    """One worker per core the training process does not need, at least one."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _epoch(net, batches, loss_fn, opt, sched, desc: str, epoch: int) -> tuple[float, int]:
    """One optimisation pass: (summed loss, images seen)."""
    total, seen = 0.0, 0
    for xb, yb in batches:
        loss = loss_fn(net(xb), yb, xb)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at epoch {epoch}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item() * len(yb)
        seen += len(yb)
    return total, seen


def _sharded_order(n: int, seed: int):
    """This rank's indices for an epoch: DistributedSampler over range(n), shuffled with
    seed + epoch (its set_epoch), so the order is per-epoch seeded, the same split on every
    rank, and padded so that all ranks take the same number of steps (DDP needs that)."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(
        range(n),
        num_replicas=distributed.world_size(),
        rank=distributed.rank(),
        shuffle=True,
        seed=seed,
    )

    def order(epoch: int) -> torch.Tensor:
        sampler.set_epoch(epoch)
        return torch.tensor(list(sampler))

    return order
