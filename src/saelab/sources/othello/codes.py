"""SAE codes [P, L] kept as their non-zero entries, column by column (a TopK code has k per row, not L).

The board-state metrics only need each latent's non-zero entries: the zeros of a column share one
rank (AUROC) and never clear a threshold ≥ 0 (F1), so storing them would cost P · L floats (1.6 GB at
98k positions × 4,096 latents) for nothing. Rows are int32 and values float32, so the sparse form
is no bigger than the dense one while at most half the entries are non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SparseCodes:
    """Codes [P, L] by column: column l's non-zero entries are rows/values[col_ptr[l]:col_ptr[l+1]], rows ascending."""

    rows: torch.Tensor  # int32 [nnz]
    values: torch.Tensor  # float32 [nnz]
    col_ptr: torch.Tensor  # int64 [L + 1]
    shape: tuple[int, int]

    @classmethod
    def from_entries(cls, rows, cols, values, shape: tuple[int, int]) -> SparseCodes:
        """From (row, column, value) triplets in any order; zero values are dropped."""
        rows, cols = torch.as_tensor(rows).long(), torch.as_tensor(cols).long()
        values = torch.as_tensor(values).float()
        if torch.isnan(values).any():
            raise ValueError("acts: contains NaN")
        keep = values != 0
        rows, cols, values = rows[keep], cols[keep], values[keep]
        order = torch.argsort(cols * max(shape[0], 1) + rows)
        counts = torch.bincount(cols, minlength=shape[1])
        col_ptr = torch.zeros(shape[1] + 1, dtype=torch.long)
        col_ptr[1:] = torch.cumsum(counts, 0)
        return cls(rows[order].int(), values[order], col_ptr, (int(shape[0]), int(shape[1])))

    @classmethod
    def from_dense(cls, x) -> SparseCodes:
        """The non-zero entries of a dense [P, L] array."""
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
        if x.ndim != 2:
            raise ValueError(f"acts.shape={tuple(x.shape)}: expected [P, L]")
        if torch.isnan(x).any():
            raise ValueError("acts: contains NaN")
        rows, cols = x.nonzero(as_tuple=True)
        return cls.from_entries(rows, cols, x[rows, cols], tuple(x.shape))

    @property
    def nnz(self) -> int:
        """Number of stored (non-zero) entries."""
        return int(self.rows.numel())

    def entry_cols(self) -> torch.Tensor:
        """Column index int64 [nnz] of every stored entry."""
        return torch.repeat_interleave(torch.arange(self.shape[1]), self.col_ptr.diff())

    def select_rows(self, keep) -> SparseCodes:
        """The codes of the rows where bool keep [P] holds, renumbered in order."""
        keep = torch.as_tensor(np.asarray(keep)).bool()
        new_row = torch.cumsum(keep, 0) - 1
        hit = keep[self.rows.long()]
        counts = torch.bincount(self.entry_cols()[hit], minlength=self.shape[1])
        col_ptr = torch.zeros_like(self.col_ptr)
        col_ptr[1:] = torch.cumsum(counts, 0)
        return SparseCodes(
            new_row[self.rows.long()[hit]].int(), self.values[hit], col_ptr, (int(keep.sum()), self.shape[1])
        )

    def entries_of(self, latents) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(position in `latents` int64, row int64, value) of every stored entry of the given columns (repeats allowed)."""
        latents = torch.as_tensor(np.asarray(latents)).long().reshape(-1)
        start, n = self.col_ptr[latents], self.col_ptr[latents + 1] - self.col_ptr[latents]
        which = torch.repeat_interleave(torch.arange(len(latents)), n)
        first = torch.cumsum(n, 0) - n
        entry = start[which] + torch.arange(int(n.sum())) - first[which]
        return which, self.rows[entry].long(), self.values[entry]

    def columns(self, latents) -> torch.Tensor:
        """Dense float32 [P, len(latents)] of the given columns."""
        which, rows, values = self.entries_of(latents)
        width = int(np.asarray(latents).size)
        out = torch.zeros(self.shape[0] * width)
        out[rows * width + which] = values
        return out.view(self.shape[0], width)

    def col_max(self) -> torch.Tensor:
        """Each column's maximum over all P rows, zeros included (0 for an empty matrix)."""
        n = self.col_ptr.diff()
        top = torch.full((self.shape[1],), -torch.inf)
        top = top.scatter_reduce(0, self.entry_cols(), self.values, "amax")
        return torch.where(n < self.shape[0], top.clamp(min=0.0), top) if self.shape[0] else torch.zeros(self.shape[1])

    def column_chunk(self, start: int, stop: int) -> SparseCodes:
        """Columns start..stop-1 as their own SparseCodes."""
        lo, hi = int(self.col_ptr[start]), int(self.col_ptr[stop])
        ptr = self.col_ptr[start : stop + 1] - lo
        return SparseCodes(self.rows[lo:hi], self.values[lo:hi], ptr, (self.shape[0], stop - start))

    def to_dense(self) -> torch.Tensor:
        """Dense float32 [P, L]."""
        out = torch.zeros(self.shape)
        out[self.rows.long(), self.entry_cols()] = self.values
        return out


DENSE_FRACTION = 0.5  # above this share of non-zero entries the sparse form is bigger than the dense one
CHUNK_ENTRIES = 1 << 22  # entries of a dense code turned sparse at once (F1 counts): ~200 MB of temporaries


@dataclass(frozen=True)
class DenseCodes:
    """Codes [P, L] that are mostly non-zero (leaky TopK), kept dense with the SparseCodes methods the scores use."""

    x: torch.Tensor  # float32 [P, L]

    @property
    def shape(self) -> tuple[int, int]:
        """(P, L)."""
        return int(self.x.shape[0]), int(self.x.shape[1])

    def select_rows(self, keep) -> DenseCodes:
        """The codes of the rows where bool keep [P] holds."""
        return DenseCodes(self.x[torch.as_tensor(np.asarray(keep)).bool()])

    def columns(self, latents) -> torch.Tensor:
        """Dense float32 [P, len(latents)] of the given columns."""
        return self.x[:, torch.as_tensor(np.asarray(latents)).long().reshape(-1)]

    def entries_of(self, latents) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(position in `latents`, row, value) of the non-zero entries of the given columns."""
        block = self.columns(latents)
        rows, which = block.nonzero(as_tuple=True)
        return which, rows, block[rows, which]

    def col_max(self) -> torch.Tensor:
        """Each column's maximum (0 for an empty matrix)."""
        return self.x.amax(0) if self.shape[0] else torch.zeros(self.shape[1])

    def column_chunk(self, start: int, stop: int) -> SparseCodes:
        """Columns start..stop-1 as SparseCodes."""
        return SparseCodes.from_dense(self.x[:, start:stop])

    def to_dense(self) -> torch.Tensor:
        """Dense float32 [P, L]."""
        return self.x


def as_codes(codes) -> SparseCodes | DenseCodes:
    """SparseCodes or DenseCodes as given; a dense array becomes DenseCodes when mostly non-zero, else SparseCodes."""
    if isinstance(codes, (SparseCodes, DenseCodes)):
        return codes
    x = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes).float()
    if x.ndim == 2 and x.numel() and int(torch.count_nonzero(x)) > DENSE_FRACTION * x.numel():
        if torch.isnan(x).any():
            raise ValueError("acts: contains NaN")
        return DenseCodes(x)
    return SparseCodes.from_dense(x)
