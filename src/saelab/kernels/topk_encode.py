"""Encoder + selection + ReLU in one autograd Function that keeps no dense [B, n] tensor for backward.

Forward, with x_c = x − b_dec:  P = x_c·W_enc + b_enc  ([B, n], in reused scratch memory; for
per-row selections one chunk of rows at a time, at most PRE_BUDGET_BYTES), then while P is alive
every code the step needs is selected from it:
  - main:  per-row top-K (TopK; Multi-TopK's larger K, sorted so its first k columns are the k
           code), BatchTopK's k·B largest positive entries of the batch, or (ReLU) every positive
           entry (both ragged rows);
  - aux:   AuxK's per-row top-k_aux among the dead latents.
It returns z_e = ReLU(P_e) at the selected entries only; the positions go into the state.
Where the native kernels load (CPU), the per-row selections take P without its bias and add it
inside one pass over each row that also selects the main and the aux code (select.row_topk_with_bias):
P is read once instead of four times (add_, group maxima, candidates, the dead columns).

Backward, given ∂L/∂z_e: g_e = ∂L/∂z_e · 1[P_e > 0] (the ReLU), zero off the selected entries;
with G the sparse [B, n] matrix of the g_e:
  ∂L/∂W_enc = x_cᵀ·G          — per latent i: Σ_e g_e·x_c[row_e]   (EntrySet.sum_rows → [n, d], one
                                transposing copy into W_enc's [d, n] layout)
  ∂L/∂b_enc = 1ᵀ·G            — per latent i: Σ_e g_e              (index_add over the entries)
  ∂L/∂b_dec = −W_enc·(1ᵀ·G)   — since ∂P[b, i]/∂b_dec = −W_enc[:, i]: one [d, n]·[n] product
  ∂L/∂x     =  G·W_encᵀ       — only if x requires grad (never in training)
An AuxK code that fills a large share of the dead latents D (k_aux/|D| ≥ the block density,
machine_aux_block_density: never with the native kernels, else set by the CPU's vector width) adds
x_cᵀ·G_D as a dense [|D|, B]·[B, d] product instead: past that density a blocked product beats
torch's per-entry row gathers. Both give the same sums.

Under bfloat16 autocast (state.low = torch.bfloat16) P is computed in bfloat16 — x_c and W_enc
rounded once per step, the product accumulated in float32 inside the GEMM and stored in bfloat16,
half the bytes for the selection to read — and the selected values come back as exact float32
upcasts. The backward stays float32 (x_c, W_enc and the entries' gradients): it touches only the
selected entries, so bfloat16 would save little there and cost precision. AuxK's dense block
products (aux_block) run in bfloat16 like the encoder's, their sums added in float32.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.kernels import threads, workspace
from saelab.kernels.native import ops as native
from saelab.kernels.plan import SparsePlan
from saelab.kernels.segment import EntrySet
from saelab.kernels.select import batch_topk, row_topk, row_topk_with_bias
from saelab.kernels.sparse_code import SparseCode, dense_block


@functools.cache
def machine_aux_block_density() -> float:
    """The share of dead latents per row above which AuxK's CPU products run on dense [B, |D|] blocks.

    With the native row kernels (kernels/native) never: at (B, d) = (4096, 768), k_aux 384 of 4,915
    dead latents (a share of 0.078), AVX-512, 2 threads, the row passes took 64 (selection) + 55
    (decode) + 100 (decoder backward) + 52 ms (encoder sum) against the block's 164 + 196 + 427 +
    180 ms. Without them, where the blocked product is fast relative to torch's row gathers the
    block wins early: with AVX-512 one gathered row cost about as much as 16 multiply-adds of a
    blocked product (break-even near 1/16); on an AVX2 CPU the gathers won up to a share of about
    0.4 (at 0.078 the block took 451 ms a product, the gathers 174 ms). GPUs' blocked products are
    faster still (EncodeState.aux_block uses 1/16 there). The choice follows the machine, not the
    run, so results are reproducible on one machine; both layouts give the same sums up to rounding.
    """
    if native.usable(torch.empty(0)):
        return 2.0  # a share no code reaches
    return 1 / 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 3 / 8


# None: by the machine (machine_aux_block_density); tests set a share to force one layout.
AUX_BLOCK_DENSITY: float | None = None

# The pre-activations of a per-row selection are computed in chunks of rows of at most this size, so
# the step's largest temporary stays bounded however large the dictionary (at n = 65,536 and a batch
# of 4,096, P whole would be 1 GiB). Chunks keep at least MIN_CHUNK_ROWS rows: measured at
# (d, n) = (768, 65,536) on 2 threads, 4,096 rows as chunks of 256 took 1.19× the whole product,
# chunks of 1,024 1.04×, of 2,048 0.98×. BatchTopK's batch-wide selection needs P whole.
PRE_BUDGET_BYTES = 1 << 28
MIN_CHUNK_ROWS = 1024
# Lean mode (workspace.lean) halves the budget and allows chunks of 256 rows: 128 MiB at n = 65,536.
LEAN_PRE_BUDGET_BYTES = 1 << 27
LEAN_MIN_CHUNK_ROWS = 256
# W_enc's gradient is summed this many bytes of [n, d] rows at a time before its transposing copy
# (lean mode: 8 MiB, a smaller peak for more, shorter passes).
SUM_BLOCK_BYTES = 1 << 25
LEAN_SUM_BLOCK_BYTES = 1 << 23


@dataclass
class EncodeState:
    """One step's selection: what to select (`plan`, as the method published it, and AuxK's dead latents) and what was selected (set by the forward)."""

    plan: SparsePlan  # main code: per-row top-width (sorted for Multi-TopK), batch top-k·B, or every positive entry
    # P computed by the caller (ReLU checks its density first), reused by the forward instead of a
    # second product, and P > 0 if the caller formed it too.
    pre: Tensor | None = field(default=None, repr=False)
    pre_positive: Tensor | None = field(default=None, repr=False)
    dead: Tensor | None = None  # AuxK: ids of the dead latents (ascending), or None
    k_aux: int = 0
    low: torch.dtype | None = None  # bfloat16: P, the selection's reads and AuxK's block products in it
    main: SparseCode | None = field(default=None, repr=False)
    aux: SparseCode | None = field(default=None, repr=False)
    aux_local: Tensor | None = field(default=None, repr=False)  # aux columns within `dead` [B, k_aux]
    # Set after the forward by a caller that keeps only some selected entries (latent sharding keeps
    # its shard's global winners): main / aux then hold just those, and the backward reads the
    # gradient of the forward's outputs at these flat positions.
    main_keep: Tensor | None = field(default=None, repr=False)
    aux_keep: Tensor | None = field(default=None, repr=False)
    _entry_sets: dict = field(default_factory=dict, repr=False)

    @property
    def aux_block(self) -> bool:
        """Whether the aux code is handled as a dense block over the dead latents."""
        if self.aux is None or self.aux.width is None:
            return False  # a ragged aux code (kept entries only) is decoded by rows
        if self.dead.device.type != "cpu":
            density = 1 / 16
        else:
            density = AUX_BLOCK_DENSITY if AUX_BLOCK_DENSITY is not None else machine_aux_block_density()
        return self.aux.width >= density * self.dead.numel()

    def entries(self, codes: list[SparseCode], n_latents: int, offsets: list[int]) -> EntrySet:
        """The (cached) EntrySet of these codes: encoder and decoder backward share one sort."""
        ids = tuple(id(c) for c in codes)
        key = (ids, tuple(offsets))
        if key not in self._entry_sets:
            like = next((s for (other, _), s in self._entry_sets.items() if other == ids), None)
            with threads.for_entries(sum(c.nnz for c in codes), codes[0].latents.device):
                self._entry_sets[key] = EntrySet(codes, n_latents, offsets, like)
        return self._entry_sets[key]


def encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, state: EncodeState) -> tuple[Tensor, Tensor]:
    """(ReLU(P) at the main code's entries, ReLU(P) at the aux code's entries — empty without AuxK)."""
    return _TopKEncode.apply(x, W_enc, b_enc, b_dec, state)


class _TopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, state):
        x_c = x - b_dec
        if state.plan.batch or state.plan.positive:
            z_main, z_aux = _encode_batch(x_c, W_enc, b_enc, state)
        else:
            z_main, z_aux = _encode_by_rows(x_c, W_enc, b_enc, state)
        ctx.state = state
        ctx.save_for_backward(x_c, W_enc, z_main, z_aux)
        ctx.set_materialize_grads(False)
        return z_main, z_aux

    @staticmethod
    def backward(ctx, dz_main, dz_aux):
        x_c, W_enc, z_main, z_aux = ctx.saved_tensors
        with threads.parallel(x_c.device):
            return _backward(ctx, x_c, W_enc, z_main, z_aux, dz_main, dz_aux)


def pre_activations(x_c: Tensor, W_enc: Tensor, b_enc: Tensor) -> Tensor:
    """P = x_c·W_enc + b_enc for these rows, in scratch memory (valid until the next call), in x_c's and W_enc's dtype."""
    pre = workspace.scratch("pre", (x_c.shape[0], W_enc.shape[1]), W_enc.dtype, W_enc.device)
    # mm then add (not addmm) so P is bit-identical to the dense path's and picks the same top-k.
    torch.mm(x_c, W_enc, out=pre)
    with threads.parallel(pre.device):
        pre.add_(b_enc)
    return pre


def narrow(low: torch.dtype | None, *tensors: Tensor) -> tuple[Tensor, ...]:
    """`tensors` rounded to `low` for a product (unchanged when `low` is None)."""
    return tensors if low is None else tuple(t.to(low) for t in tensors)


def row_chunks(rows: int, n: int, element_size: int) -> list[tuple[int, int]]:
    """Row ranges [lo, hi) whose [rows, n] pre-activations fit the chunk budget (at least its minimum rows each)."""
    lean = workspace.is_lean()
    budget, min_rows = (LEAN_PRE_BUDGET_BYTES, LEAN_MIN_CHUNK_ROWS) if lean else (PRE_BUDGET_BYTES, MIN_CHUNK_ROWS)
    step = max(min_rows, budget // (n * element_size))
    return [(lo, min(lo + step, rows)) for lo in range(0, rows, step)]


def _encode_by_rows(x_c: Tensor, W_enc: Tensor, b_enc: Tensor, state: EncodeState) -> tuple[Tensor, Tensor]:
    """Per-row selections (TopK, Multi-TopK, AuxK), chunk of rows by chunk so P stays within budget."""
    main_v, main_c, aux = [], [], []
    x_op, W_op, b_op = narrow(state.low, x_c, W_enc, b_enc)
    n = W_enc.shape[1]
    width = state.plan.width(n)
    fused = native.usable(x_op) and W_op.dtype in (torch.float32, torch.bfloat16)
    for lo, hi in row_chunks(x_c.shape[0], n, W_op.element_size()):
        if fused:
            # The bias is added inside the selection, in the same read of each row of P.
            pre = workspace.scratch("pre", (hi - lo, n), W_op.dtype, W_op.device)
            torch.mm(x_op[lo:hi], W_op, out=pre)
            k_aux = min(state.k_aux, state.dead.numel()) if state.dead is not None else 0
            v, cols, selected = row_topk_with_bias(pre, b_op, width, state.plan.sorted, state.dead, k_aux)
            main_v.append(v)
            main_c.append(cols)
            if selected is not None:
                aux.append(selected)
            continue
        pre = pre_activations(x_op[lo:hi], W_op, b_op)
        with threads.parallel(pre.device):
            v, cols = row_topk(pre, width, sorted=state.plan.sorted)
            main_v.append(v)
            main_c.append(cols)
            if state.dead is not None:
                aux.append(_aux_topk(pre, state))
    with threads.single(x_c.device):
        z_main = torch.relu_(_cat(main_v))
        state.main = SparseCode.fixed_width(_cat(main_c), z_main.detach())
        z_aux = _select_aux(state, *(_cat(list(p)) for p in zip(*aux))) if aux else x_c.new_zeros(0)
    return z_main, z_aux


def _encode_batch(x_c: Tensor, W_enc: Tensor, b_enc: Tensor, state: EncodeState) -> tuple[Tensor, Tensor]:
    """BatchTopK or ReLU (and AuxK) from the whole batch's P: ragged rows, so P is not chunked."""
    pre = state.pre if state.pre is not None else pre_activations(*narrow(state.low, x_c, W_enc, b_enc))
    mask = state.pre_positive
    state.pre = state.pre_positive = None  # scratch memory: valid for this step only
    rows = pre.shape[0]
    with threads.parallel(pre.device):
        # Positive entries only: ReLU is the identity there.
        r, c, v = positive_entries(pre, mask) if state.plan.positive else batch_topk(pre, state.plan.k)
        v = v.to(x_c.dtype)  # a bfloat16 P's values, upcast exactly
        # Positions only (values detached): the state lives on ctx, holding outputs would make a cycle.
        state.main = SparseCode(rows, c, v.detach(), rows=r)
        z_aux = pre.new_zeros(0)
        if state.dead is not None:
            selected = _aux_topk(pre, state)
            with threads.single(pre.device):
                z_aux = _select_aux(state, *selected)
    return v, z_aux


def positive_entries(pre: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, cols, values) of every positive entry of P (`mask`: P > 0 if already formed), row-major: the ReLU code's non-zeros."""
    flat = pre.reshape(-1)
    idx = (mask if mask is not None else pre > 0).reshape(-1).nonzero().squeeze(1)
    n = pre.shape[1]
    return idx.div(n, rounding_mode="floor"), idx.remainder(n), flat.index_select(0, idx)


def _aux_topk(pre: Tensor, state: EncodeState) -> tuple[Tensor, Tensor, Tensor]:
    """Each row's top-k_aux among the dead latents: (values in float32, columns within state.dead, latent ids)."""
    k = min(state.k_aux, state.dead.numel())
    if native.usable(pre) and pre.dtype in (torch.float32, torch.bfloat16):
        return native.topk_among(pre, state.dead, k)  # reads the dead columns in place: no [B, |D|] copy
    dead_pre = workspace.scratch("block", (pre.shape[0], state.dead.numel()), pre.dtype, pre.device)
    torch.index_select(pre, 1, state.dead, out=dead_pre)
    values, local = row_topk(dead_pre, k)
    return values, local, state.dead[local]


def _select_aux(state: EncodeState, values: Tensor, local: Tensor, latents: Tensor) -> Tensor:
    """ReLU of the aux values; their positions go into state.aux / state.aux_local."""
    z_aux = torch.relu_(values)
    state.aux = SparseCode.fixed_width(latents, z_aux.detach())
    state.aux_local = local
    return z_aux


def _kept(grad: Tensor, keep: Tensor | None) -> Tensor:
    return grad if keep is None else grad[keep]


def _cat(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _backward(ctx, x_c, W_enc, z_main, z_aux, dz_main, dz_aux):
    state: EncodeState = ctx.state
    n = W_enc.shape[1]
    with threads.single(x_c.device):
        # ReLU: the gradient passes where z > 0 (P > 0), as torch.relu's backward does.
        grads = []
        if dz_main is not None:
            grads.append((state.main, _kept(dz_main.mul(z_main > 0).reshape(-1), state.main_keep)))
        if state.aux is not None and dz_aux is not None:
            grads.append((state.aux, _kept(dz_aux.mul(z_aux > 0).reshape(-1), state.aux_keep)))
        block = [(c, g) for c, g in grads if c is state.aux and state.aux_block]
        listed = [(c, g) for c, g in grads if not (c is state.aux and state.aux_block)]
        if listed and ctx.needs_input_grad[1]:
            entries = state.entries([c for c, _ in listed], n, [0] * len(listed))
            weights = listed[0][1] if len(listed) == 1 else torch.cat([g for _, g in listed])
        col_sums = None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            col_sums = x_c.new_zeros(n)
            for c, g in grads:
                col_sums.index_add_(0, c.latents, g.to(x_c.dtype))

    d_x = d_W_enc = d_b_enc = d_b_dec = None
    if ctx.needs_input_grad[1]:
        if W_enc.stride(0) == 1 and W_enc.stride(1) == W_enc.shape[0]:
            # W_enc stored column-major: [n, d] rows are its columns, no copy.
            d_W_enc_t = entries.sum_rows(x_c, weights) if listed else x_c.new_zeros(n, x_c.shape[1])
            d_W_enc = d_W_enc_t.t()
        else:
            d_W_enc = workspace.gradient_buffer(W_enc)
            if listed:
                # Straight into W_enc's [d, n] layout (torch path: block by block of latents, so the
                # transposing copy needs a small temporary, not a second [n, d] gradient: 201 MB at n = 65,536).
                block_bytes = LEAN_SUM_BLOCK_BYTES if workspace.is_lean() else SUM_BLOCK_BYTES
                entries.sum_rows_into_columns(x_c, weights, d_W_enc, block_bytes // (x_c.shape[1] * x_c.element_size()))
            else:
                d_W_enc.zero_()
        for c, g in block:
            g_dead, x_op = narrow(state.low, dense_block(c, state.aux_local, g, state.dead.numel()), x_c)
            d_W_enc.index_add_(1, state.dead, (g_dead.t() @ x_op).t().to(d_W_enc.dtype))
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
