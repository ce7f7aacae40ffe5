"""Rows of an in-memory torch tensor in a dtype numpy lacks (bfloat16), read as float32 one slice at a time."""

from __future__ import annotations

import numpy as np
import torch


class TensorRows:
    """A [N, d_in] CPU tensor seen as the read-only array a store shard holds.

    Indexing (a slice or an array of row indices) returns a float32 numpy copy of just those
    rows, so a bfloat16 tensor is never widened whole: memory beyond the tensor itself is one
    batch (or one buffer) of float32 rows at a time.
    """

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self.shape = tuple(tensor.shape)
        self.ndim = tensor.ndim
        self.torch_dtype = tensor.dtype
        # The dtype rows are read as; the tensor's own one is `torch_dtype` (numpy has no bfloat16).
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        """float32 copy of the rows `key` selects (a slice, an int or an integer array)."""
        if isinstance(key, np.ndarray):
            key = torch.from_numpy(np.ascontiguousarray(key, dtype=np.int64))
        return self.tensor[key].to(torch.float32).numpy()


def rows_of_tensor(tensor: torch.Tensor) -> np.ndarray | TensorRows:
    """A CPU tensor's rows without a copy: its numpy view, or TensorRows where numpy lacks the dtype (bfloat16)."""
    return TensorRows(tensor) if tensor.dtype == torch.bfloat16 else tensor.numpy()
