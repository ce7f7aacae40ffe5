"""Encoder + selection + ReLU in one autograd Function that keeps no dense [B, n] tensor for backward.

Forward, with x_c = x − b_dec:  P = x_c·W_enc + b_enc  ([B, n], in reused scratch memory), then
while P is alive every code the step needs is selected from it:
  - main:  per-row top-K (TopK; Multi-TopK's larger K, sorted so its first k columns are the k
           code), or BatchTopK's k·B largest positive entries of the batch (ragged rows);
  - aux:   AuxK's per-row top-k_aux among the dead latents.
It returns z_e = ReLU(P_e) at the selected entries only; the positions go into the plan.

Backward, given ∂L/∂z_e: g_e = ∂L/∂z_e · 1[P_e > 0] (the ReLU), zero off the selected entries;
with G the sparse [B, n] matrix of the g_e:
  ∂L/∂W_enc = x_cᵀ·G          — per latent i: Σ_e g_e·x_c[row_e]   (EntrySet.sum_rows → [n, d], one
                                transposing copy into W_enc's [d, n] layout)
  ∂L/∂b_enc = 1ᵀ·G            — per latent i: Σ_e g_e              (index_add over the entries)
  ∂L/∂b_dec = −W_enc·(1ᵀ·G)   — since ∂P[b, i]/∂b_dec = −W_enc[:, i]: one [d, n]·[n] product
  ∂L/∂x     =  G·W_encᵀ       — only if x requires grad (never in training)
An AuxK code that fills a large share of the dead latents D (k_aux/|D| ≥ AUX_BLOCK_DENSITY) adds
x_cᵀ·G_D as a dense [|D|, B]·[B, d] product instead: past that density a blocked product beats
per-entry row gathers. Both give the same sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.kernels import threads, workspace
from saelab.kernels.segment import EntrySet
from saelab.kernels.select import batch_topk, row_topk
from saelab.kernels.sparse_code import SparseCode, dense_block

# Above this share of dead latents selected per row, AuxK runs on dense [B, |D|] blocks: on this
# kind of CPU one gathered 768-wide row costs about as much as 16 multiply-adds of a blocked product.
AUX_BLOCK_DENSITY = 1 / 16


@dataclass
class EncodePlan:
    """What to select (set by the caller) and what was selected (set by the forward)."""

    k: int = 0  # per-row top-k of the main code (ignored when batch_k is set)
    sorted: bool = False  # main code sorted by decreasing pre-activation (Multi-TopK)
    batch_k: int | None = None  # BatchTopK: keep the k·B largest positive entries of the batch
    dead: Tensor | None = None  # AuxK: ids of the dead latents (ascending), or None
    k_aux: int = 0
    main: SparseCode | None = field(default=None, repr=False)
    aux: SparseCode | None = field(default=None, repr=False)
    aux_local: Tensor | None = field(default=None, repr=False)  # aux columns within `dead` [B, k_aux]
    _entry_sets: dict = field(default_factory=dict, repr=False)

    @property
    def aux_block(self) -> bool:
        """Whether the aux code is handled as a dense block over the dead latents."""
        return self.aux is not None and self.aux.width >= AUX_BLOCK_DENSITY * self.dead.numel()

    def entries(self, codes: list[SparseCode], n_latents: int, offsets: list[int]) -> EntrySet:
        """The (cached) EntrySet of these codes: encoder and decoder backward share one sort."""
        key = (tuple(id(c) for c in codes), tuple(offsets))
        if key not in self._entry_sets:
            self._entry_sets[key] = EntrySet(codes, n_latents, offsets)
        return self._entry_sets[key]


def encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, plan: EncodePlan) -> tuple[Tensor, Tensor]:
    """(ReLU(P) at the main code's entries, ReLU(P) at the aux code's entries — empty without AuxK)."""
    return _TopKEncode.apply(x, W_enc, b_enc, b_dec, plan)


class _TopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, plan):
        rows, n = x.shape[0], W_enc.shape[1]
        x_c = x - b_dec
        pre = workspace.scratch("pre", (rows, n), W_enc.dtype, W_enc.device)
        # mm then add (not addmm) so P is bit-identical to the dense path's and picks the same top-k.
        torch.mm(x_c, W_enc, out=pre)
        with threads.parallel(pre.device):
            pre.add_(b_enc)
            z_main, z_aux = _select(pre, plan)
        ctx.plan = plan
        ctx.save_for_backward(x_c, W_enc, z_main, z_aux)
        ctx.set_materialize_grads(False)
        return z_main, z_aux

    @staticmethod
    def backward(ctx, dz_main, dz_aux):
        x_c, W_enc, z_main, z_aux = ctx.saved_tensors
        with threads.parallel(x_c.device):
            return _backward(ctx, x_c, W_enc, z_main, z_aux, dz_main, dz_aux)


def _select(pre: Tensor, plan: EncodePlan) -> tuple[Tensor, Tensor]:
    """Fill plan.main / plan.aux from P; return ReLU(P) at their entries."""
    rows = pre.shape[0]
    if plan.batch_k is not None:
        r, c, v = batch_topk(pre, plan.batch_k)  # positive entries only: ReLU is the identity there
        # Positions only (values detached): the plan lives on ctx, holding outputs would make a cycle.
        plan.main = SparseCode(rows, c, v.detach(), rows=r)
        z_main = v
    else:
        v, cols = row_topk(pre, plan.k, sorted=plan.sorted)
        with threads.single(pre.device):
            z_main = torch.relu_(v)
        plan.main = SparseCode.fixed_width(cols, z_main.detach())
    z_aux = pre.new_zeros(0)
    if plan.dead is not None:
        dead_pre = workspace.scratch("block", (rows, plan.dead.numel()), pre.dtype, pre.device)
        torch.index_select(pre, 1, plan.dead, out=dead_pre)
        v, local = row_topk(dead_pre, min(plan.k_aux, plan.dead.numel()))
        with threads.single(pre.device):
            z_aux = torch.relu_(v)
            plan.aux = SparseCode.fixed_width(plan.dead[local], z_aux.detach())
        plan.aux_local = local
    return z_main, z_aux


def _backward(ctx, x_c, W_enc, z_main, z_aux, dz_main, dz_aux):
    plan: EncodePlan = ctx.plan
    n = W_enc.shape[1]
    with threads.single(x_c.device):
        # ReLU: the gradient passes where z > 0 (P > 0), as torch.relu's backward does.
        grads = []
        if dz_main is not None:
            grads.append((plan.main, dz_main.mul(z_main > 0).reshape(-1)))
        if plan.aux is not None and dz_aux is not None:
            grads.append((plan.aux, dz_aux.mul(z_aux > 0).reshape(-1)))
        block = [(c, g) for c, g in grads if c is plan.aux and plan.aux_block]
        listed = [(c, g) for c, g in grads if not (c is plan.aux and plan.aux_block)]
        if listed and ctx.needs_input_grad[1]:
            entries = plan.entries([c for c, _ in listed], n, [0] * len(listed))
            weights = listed[0][1] if len(listed) == 1 else torch.cat([g for _, g in listed])
        col_sums = None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            col_sums = x_c.new_zeros(n)
            for c, g in grads:
                col_sums.index_add_(0, c.latents, g.to(x_c.dtype))

    d_x = d_W_enc = d_b_enc = d_b_dec = None
    if ctx.needs_input_grad[1]:
        if listed:
            d_W_enc_t = entries.sum_rows(x_c, weights)
        else:
            d_W_enc_t = x_c.new_zeros(n, x_c.shape[1])
        for c, g in block:
            g_dead = dense_block(c, plan.aux_local, g, plan.dead.numel())
            d_W_enc_t.index_add_(0, plan.dead, g_dead.t() @ x_c)
        if W_enc.stride(0) == 1 and W_enc.stride(1) == W_enc.shape[0]:
            d_W_enc = d_W_enc_t.t()  # W_enc stored column-major: [n, d] rows are its columns, no copy
        else:
            d_W_enc = workspace.gradient_buffer(W_enc)
            d_W_enc.copy_(d_W_enc_t.t())
    if col_sums is not None:
        d_b_enc = col_sums if ctx.needs_input_grad[2] else None
        d_b_dec = -(W_enc @ col_sums) if ctx.needs_input_grad[3] else None
    if ctx.needs_input_grad[0]:
        d_x = x_c.new_zeros(x_c.shape)
        if grads:
            table = W_enc.t().contiguous()
            for c, g in grads:
                d_x += F.embedding_bag(c.latents, table, c.crow[:-1], mode="sum", per_sample_weights=g.to(table.dtype))
    return d_x, d_W_enc, d_b_enc, d_b_dec, None
