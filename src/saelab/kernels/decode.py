"""Decoding of several sparse codes at once by gathering decoder rows, with a joint backward.

Forward, for each code c (values z_e at entries (row_e, latent_e)):
  Y_c[b] = Σ_{e in row b} z_e · W_dec[latent_e]          (embedding_bag, per-sample weights z)
No bias is added here (AuxK's reconstruction has none); callers add b_dec themselves.

Backward, given dY_c = ∂L/∂Y_c:
  ∂L/∂z_e   = ⟨W_dec[latent_e], dY_c[row_e]⟩             (EntrySet.dots, latent-major)
  ∂L/∂W_dec = Σ_c Z_cᵀ·dY_c — per latent i: Σ_{c, e: latent_e = i} z_e · dY_c[row_e]
(both from one pass over the gathered dY rows: EntrySet.dots_and_sums)
Every code's entries index one stacked table [dY_1; dY_2; …] (code c's rows offset by its
position), so one latent sort and one `sum_rows` write the [n, d] decoder gradient however many
codes (k, Multi-TopK's 4k, AuxK) share it.
A block code (AuxK over a dense share of the dead latents D) uses matrix products over D instead:
  Y = Z_D·W_dec[D],  ∂L/∂Z_D = dY·W_dec[D]ᵀ (read at the code's entries),  ∂L/∂W_dec[D] += Z_Dᵀ·dY.
Under bfloat16 autocast (EncodeState.low) the forward gathers rows of a bfloat16 copy of W_dec (made
once per step: half the bytes per entry, which is what bounds the decode) with bfloat16 weights;
embedding_bag sums them in float32 and rounds the [B, d] result once. The block code's products
run in bfloat16 too. The row-gather backward stays float32 (dots and sums over the entries).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.kernels import threads, workspace
from saelab.kernels.native import ops as native
from saelab.kernels.sparse_code import SparseCode, dense_block
from saelab.kernels.topk_encode import narrow


@dataclass
class DecodeItem:
    """One code to decode: its positions and, for a block code, its block (latent ids, local columns)."""

    code: SparseCode
    block: Tensor | None = None
    local: Tensor | None = None


def decode(W_dec: Tensor, items: list[DecodeItem], values: list[Tensor], plan) -> list[Tensor]:
    """[Σ_e z_e · W_dec[latent_e] per row] for each item, z = the matching `values` (differentiable).

    `plan` (an EncodeState) caches the latent sort shared with the encoder's backward.
    """
    return list(_SparseDecode.apply(W_dec, items, plan, *values))


def _forward_one(W_dec: Tensor, item: DecodeItem, z: Tensor) -> Tensor:
    """One item's decode; W_dec may be a bfloat16 copy (z is then rounded to it; the result is float32)."""
    code = item.code
    z = z.to(W_dec.dtype)
    if item.block is not None:
        out = dense_block(code, item.local, z, item.block.numel()) @ W_dec.index_select(0, item.block)
    elif code.width is not None:
        out = F.embedding_bag(
            code.latents.view(code.n_rows, code.width),
            W_dec,
            mode="sum",
            per_sample_weights=z.reshape(code.n_rows, code.width),
        )
    else:
        out = F.embedding_bag(code.latents, W_dec, code.crow[:-1], mode="sum", per_sample_weights=z.reshape(-1))
    return out if out.element_size() >= 4 else out.float()


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, W_dec, items, plan, *values):
        ctx.items, ctx.plan = items, plan
        ctx.save_for_backward(W_dec, *values)
        ctx.set_materialize_grads(False)
        with threads.parallel(W_dec.device):
            (table,) = narrow(getattr(plan, "low", None), W_dec)
            return tuple(_forward_one(table, item, z) for item, z in zip(items, values))

    @staticmethod
    def backward(ctx, *grads):
        W_dec, *values = ctx.saved_tensors
        with threads.parallel(W_dec.device):
            return (*_backward(ctx, W_dec, values, grads),)


def _stacked(parts: list[Tensor]) -> Tensor:
    """The parts one above the other, in the "stacked" scratch buffer (valid until the next call)."""
    rows = sum(p.shape[0] for p in parts)
    out = workspace.scratch("stacked", (rows, parts[0].shape[1]), parts[0].dtype, parts[0].device)
    return torch.cat(parts, out=out)


def _backward(ctx, W_dec, values, grads):
    items: list[DecodeItem] = ctx.items
    n = W_dec.shape[0]
    d_values = [None] * len(values)
    listed, blocks = [], []
    for j, (item, z, dY) in enumerate(zip(items, values, grads)):
        if dY is not None:
            (blocks if item.block is not None else listed).append((j, item, z, dY))

    d_W_dec = None
    if listed:
        with threads.single(W_dec.device):
            offsets = [i * dY.shape[0] for i, (_, _, _, dY) in enumerate(listed)]
            entries = ctx.plan.entries([item.code for _, item, _, _ in listed], n, offsets)
            weights = listed[0][2] if len(listed) == 1 else torch.cat([z.reshape(-1) for _, _, z, _ in listed])
        table = listed[0][3] if len(listed) == 1 else _stacked([dY for _, _, _, dY in listed])
        want_dots = any(ctx.needs_input_grad[3 + j] for j, _, _, _ in listed)
        # Reused gradient memory (no page faults) where the native pass fills it.
        out = workspace.gradient_buffer(W_dec) if ctx.needs_input_grad[0] and native.usable(W_dec, table) else None
        dots, d_W_dec = entries.dots_and_sums(W_dec, table, weights, want_dots, ctx.needs_input_grad[0], out)
        if want_dots:
            for (j, _, z, _), dz in zip(listed, entries.split(dots)):
                d_values[j] = dz.view_as(z)
    low = getattr(ctx.plan, "low", None)
    for j, item, z, dY in blocks:
        dY_op, W_block = narrow(low, dY, W_dec.index_select(0, item.block))
        full = workspace.scratch("block", (dY.shape[0], item.block.numel()), dY_op.dtype, dY.device)
        d_values[j] = torch.mm(dY_op, W_block.t(), out=full).gather(1, item.local).to(z.dtype).view_as(z)
        if ctx.needs_input_grad[0]:
            if d_W_dec is None:
                d_W_dec = W_dec.new_zeros(W_dec.shape)
            z_block = dense_block(item.code, item.local, z.to(dY_op.dtype), item.block.numel())
            d_W_dec.index_add_(0, item.block, (z_block.t() @ dY_op).to(W_dec.dtype))
    if d_W_dec is None and ctx.needs_input_grad[0]:
        d_W_dec = W_dec.new_zeros(W_dec.shape)
    return (d_W_dec, None, None, *d_values)
