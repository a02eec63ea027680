"""Arrays whose rows are made when they are indexed. An image folder's images are decoded (and
preprocessed) batch by batch as training, evaluation and export index them, so memory does not
grow with the number of images; every consumer indexes rows (`x[i:j]`, `x[idx]`, `len(x)`,
`x.shape`), which an ndarray and a LazyRows answer alike."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


class LazyRows:
    """`make(indices) -> stacked rows` behind the indexing of an (N, *row_shape) array."""

    def __init__(self, n: int, row_shape: tuple, dtype, make: Callable[[np.ndarray], np.ndarray]):
        self.shape = (n, *row_shape)
        self.dtype = np.dtype(dtype)
        self._make = make

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            return self._make(np.asarray([idx]))[0]
        return self._make(self.indices(idx))

    def indices(self, idx) -> np.ndarray:
        """Row numbers for a slice, an index array or a tensor of indices."""
        if isinstance(idx, slice):
            return np.arange(len(self))[idx]
        if isinstance(idx, torch.Tensor):
            idx = idx.numpy()
        return np.asarray(idx, dtype=np.int64)

    def take(self, idx) -> LazyRows:
        """The rows `idx` as another LazyRows (nothing is made)."""
        sub = self.indices(idx)
        return LazyRows(len(sub), self.shape[1:], self.dtype, lambda j: self._make(sub[j]))

    def map(self, fn: Callable[[np.ndarray], np.ndarray], row_shape: tuple, dtype) -> LazyRows:
        """Rows made by `fn` from this array's rows (e.g. preprocessing)."""
        return LazyRows(len(self), row_shape, dtype, lambda j: fn(self._make(j)))


def take(x, idx):
    """Rows `idx` of an ndarray (a copy) or of a LazyRows (a view)."""
    return x.take(idx) if isinstance(x, LazyRows) else x[idx]
