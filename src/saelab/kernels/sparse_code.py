"""A batch of latent codes stored as (row, latent, value) triples in row-major (CSR) order."""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.kernels import threads, workspace


class SparseCode:
    """The sparse path's latent code: `values[e]` sits at (`rows[e]`, `latents[e]`).

    Entries are grouped by row (CSR): row b owns entries crow[b]:crow[b+1]. A fixed-width code
    (every row the same number of entries, as TopK) has `width` set, and then rows, latents and
    values reshape to [B, width]. Values may carry autograd history; zeros may be stored (a TopK
    entry whose pre-activation was ≤ 0) and count as inactive everywhere, as in the dense code.
    """

    def __init__(
        self, n_rows: int, latents: Tensor, values: Tensor, rows: Tensor | None = None, width: int | None = None
    ):
        if rows is None and width is None:
            raise ValueError("a SparseCode needs its row ids or a fixed width")
        self.n_rows = n_rows
        self.latents = latents.reshape(-1)
        self.values = values.reshape(-1)
        self.width = width
        self._rows = None if rows is None else rows.reshape(-1)
        self._crow: Tensor | None = None

    @classmethod
    def fixed_width(cls, latents: Tensor, values: Tensor) -> "SparseCode":
        """Code whose row b holds latents[b] [width] with values[b]."""
        return cls(latents.shape[0], latents, values, width=latents.shape[1])

    @property
    def rows(self) -> Tensor:
        """Row id of every entry."""
        if self._rows is None:
            self._rows = torch.arange(self.n_rows, device=self.latents.device).repeat_interleave(self.width)
        return self._rows

    @property
    def crow(self) -> Tensor:
        """CSR row pointers [B + 1] (entries of row b are crow[b]:crow[b+1])."""
        if self._crow is None:
            if self.width is not None:
                self._crow = torch.arange(0, self.n_rows * self.width + 1, self.width, device=self.latents.device)
            else:
                counts = torch.bincount(self.rows, minlength=self.n_rows)
                self._crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return self._crow

    @property
    def nnz(self) -> int:
        """Number of stored entries (zeros included)."""
        return self.latents.numel()

    def with_values(self, values: Tensor) -> "SparseCode":
        """The same positions holding other values."""
        code = SparseCode(self.n_rows, self.latents, values, self._rows, self.width)
        code._crow = self._crow
        return code

    def fired_latents(self, n_latents: int) -> Tensor:
        """Bool [n]: latents with a positive value anywhere in the batch."""
        with threads.single(self.latents.device):
            # Summing the clamped values needs no boolean-mask compaction (one pass over the entries).
            values = self.values.detach()
            return values.new_zeros(n_latents).index_add_(0, self.latents, values.clamp_min(0)) > 0

    def active_per_row(self) -> Tensor:
        """Number of non-zero latents of each row."""
        with threads.single(self.latents.device):
            nonzero = self.values.detach() != 0
            if self.width is not None:
                return nonzero.view(self.n_rows, self.width).sum(dim=-1)
            return torch.bincount(self.rows[nonzero], minlength=self.n_rows)

    def nonzero_values(self) -> Tensor:
        """The code's non-zero values (any order)."""
        with threads.single(self.latents.device):
            return self.values[self.values != 0]

    def to_dense(self, n_latents: int) -> Tensor:
        """Dense [B, n] code (differentiable in the values); for tests and small batches."""
        out = self.values.new_zeros(self.n_rows, n_latents)
        return out.index_put((self.rows, self.latents), self.values, accumulate=True)


def dense_block(code: SparseCode, local: Tensor, values: Tensor, width: int) -> Tensor:
    """[B, width] matrix holding a fixed-width code's values at its block-local columns, 0 elsewhere.

    Written into the shared "block" scratch buffer: valid until the next dense_block call.
    """
    out = workspace.scratch("block", (code.n_rows, width), values.dtype, values.device)
    return out.zero_().scatter_(1, local, values.reshape(code.n_rows, -1))
