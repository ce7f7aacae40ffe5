"""The sparse products every backward here is made of, over the entries of one or more codes.

An EntrySet stacks the (row, latent) entries of several codes; code c's rows are offset by
`offsets[c]` so that each code can index its own block of a stacked table. Sorted once by latent
(stable, so each latent's entries keep row order and sums are reproducible), it gives
  - `sum_rows`:  out[i] = Σ_{e: latent_e = i} w_e · table[row_e]   ([n, d], e.g. Zᵀ·dX̂, x_cᵀ·G)
    as one `embedding_bag` over the latent-sorted entries: a gather-only loop over the output
    rows, with no scatter-add races and no [nnz, d] intermediate;
  - `dots`:      dot_e = ⟨by_latent[latent_e], by_row[row_e]⟩     (e.g. dX̂·W_decᵀ at Z's support)
    as a sampled product over the latent-major pattern, so each `by_latent` row (a decoder row,
    from a table too large for the cache) is read once and the `by_row` rows (the batch's, small)
    are the ones gathered;
  - `dots_and_sums`: both at once where the dots' `by_row` table is the sums' table (the decoder's
    backward), so each gathered row is read once for its dot and its sum.
On the CPU the sort, the sums and the fused pass run the native kernels (kernels/native) when they
load: the same sums, each latent's entries in the same order.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.kernels import threads, workspace
from saelab.kernels.native import ops as native
from saelab.kernels.sparse_code import SparseCode


class EntrySet:
    """The entries of `codes`, concatenated in order, with their latent-major ordering."""

    def __init__(self, codes: list[SparseCode], n_latents: int, offsets: list[int], like: "EntrySet | None" = None):
        """`like`: an EntrySet of the same codes (other offsets) whose latent sort is reused."""
        self.n_latents = n_latents
        self.sizes = [c.nnz for c in codes]
        if like is not None:  # the order depends on the latents only, not on the row offsets
            self.order, self.crow = like.order, like.crow
        else:
            latents = codes[0].latents if len(codes) == 1 else torch.cat([c.latents for c in codes])
            if native.usable(latents):
                self.order, self.crow = native.sort_by_latent(latents, n_latents)
            else:
                self.order = torch.argsort(latents, stable=True)
                counts = torch.bincount(latents, minlength=n_latents)
                self.crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        if native.usable(self.order) and all(c.width for c in codes):
            # Fixed-width codes: each entry's row follows from its position, so no row table is formed.
            self.sorted_rows = native.rows_in_order(
                self.order, [(c.nnz, c.width, off) for c, off in zip(codes, offsets)]
            )
        else:
            self.sorted_rows = self._rows(codes, offsets).index_select(0, self.order)

    @staticmethod
    def _rows(codes: list[SparseCode], offsets: list[int]) -> Tensor:
        """Every entry's row in the stacked table (code c's rows shifted by offsets[c])."""
        if len(codes) == 1:
            return codes[0].rows + offsets[0] if offsets[0] else codes[0].rows
        return torch.cat([c.rows + off if off else c.rows for c, off in zip(codes, offsets)])

    def sum_rows(self, table: Tensor, weights: Tensor) -> Tensor:
        """out[i] = Σ_{e: latent_e = i} weights[e] · table[row_e], as [n, d] (weights in entry order)."""
        ((_, _, out),) = self.sum_rows_blocks(table, weights, self.n_latents)
        return out

    def sum_rows_blocks(self, table: Tensor, weights: Tensor, block: int, transient: bool = False):
        """sum_rows in blocks of `block` latents: yields (lo, hi, out[lo:hi]) as [hi − lo, d] tensors,
        fresh ones, or (`transient`) one scratch buffer valid until the next block (no page faults)."""
        block = max(1, block)
        if native.usable(table):
            for lo in range(0, self.n_latents, block):
                hi = min(lo + block, self.n_latents)
                shape = (hi - lo, table.shape[1])
                out = workspace.scratch("sums", shape, torch.float32, table.device) if transient else None
                _, out = native.segment_dots_sums(
                    None, table, self.sorted_rows, self.order, weights.reshape(-1), self.crow, lo, hi, False, True, out
                )
                yield lo, hi, out
            return
        with threads.for_entries(self.order.numel(), table.device):
            w = weights.reshape(-1)[self.order].to(table.dtype)
        for lo in range(0, self.n_latents, block):
            hi = min(lo + block, self.n_latents)
            start, end = int(self.crow[lo]), int(self.crow[hi])
            offsets = self.crow[lo:hi] - start
            yield (
                lo,
                hi,
                F.embedding_bag(
                    self.sorted_rows[start:end], table, offsets, mode="sum", per_sample_weights=w[start:end]
                ),
            )

    def dots(self, by_latent: Tensor, by_row: Tensor) -> Tensor:
        """dot_e = ⟨by_latent[latent_e], by_row[row_e]⟩ for every entry, in entry order."""
        if self.order.numel() == 0:
            return by_row.new_zeros(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta": sampled_addmm is what we need
            pattern = torch.sparse_csr_tensor(
                self.crow,
                self.sorted_rows,
                self._zeros(by_row),
                (self.n_latents, by_row.shape[0]),
                check_invariants=False,
            )
            by_latent_order = torch.sparse.sampled_addmm(pattern, by_latent, by_row.t(), beta=0.0).values()
        with threads.for_entries(self.order.numel(), by_row.device):
            out = torch.empty_like(by_latent_order)
            out[self.order] = by_latent_order
        return out

    def sum_rows_into_columns(self, table: Tensor, weights: Tensor, out: Tensor, block: int) -> None:
        """out[:, i] = sum_rows(table, weights)[i] for an [d, n] `out` (W_enc's gradient layout).

        Natively in one pass that stores 16 latents at a time transposed; otherwise by blocks of
        `block` latents (scratch memory) and a transposing copy of each.
        """
        if native.usable(table) and out.stride(1) == 1 and out.dtype == torch.float32:
            native.segment_sums_columns(table, self.sorted_rows, self.order, weights.reshape(-1), self.crow, out)
            return
        for lo, hi, part in self.sum_rows_blocks(table, weights, block, transient=True):
            out[:, lo:hi].copy_(part.t())

    def dots_and_sums(
        self, by_latent: Tensor, table: Tensor, weights: Tensor, dots: bool = True, sums: bool = True, out=None
    ):
        """(dots(by_latent, table) if `dots`, sum_rows(table, weights) if `sums`): one pass over the rows on the CPU.

        `out`: a contiguous float32 [n, d] tensor the native pass may write the sums into (else a fresh one).
        """
        if native.usable(by_latent, table):
            if out is not None and not (out.is_contiguous() and out.dtype == torch.float32):
                out = None
            return native.segment_dots_sums(
                by_latent, table, self.sorted_rows, self.order, weights.reshape(-1), self.crow, 0, None, dots, sums, out
            )
        return (self.dots(by_latent, table) if dots else None), (self.sum_rows(table, weights) if sums else None)

    def _zeros(self, like: Tensor) -> Tensor:
        """Placeholder pattern values (sampled_addmm with beta=0 reads only the pattern)."""
        return like.new_zeros(self.order.numel())

    def split(self, per_entry: Tensor) -> list[Tensor]:
        """Per-entry values cut back into one tensor per code."""
        return list(per_entry.split(self.sizes))
