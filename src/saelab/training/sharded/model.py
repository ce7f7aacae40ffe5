"""Latent-sharded dictionaries: each rank holds a contiguous block of the latents, for SAEs that do not fit one device.

With N ranks and n latents, rank r holds W_enc[:, r·n/N : (r+1)·n/N], the same slice of b_enc and
the same rows of W_dec; b_dec (the scaling paper's b_pre), the normalizer and the method's state
(k, BatchTopK's threshold) are replicated. Every rank sees the whole batch. One step:

1. each rank computes its pre-activations (x − b_dec) W_enc_r + b_enc_r  [B, n/N];
2. the TopK family selects globally: each rank sends its k largest per row (B·k values, padded
   with −inf), and the k largest of the N·k gathered candidates win; a rank keeps the winners that
   came from it. The union of the local top-k's holds the global top-k, so the selection equals the
   one-process TopK (up to ties). BatchTopK does the same with each rank's k·B largest of the batch;
3. x̂ = Σ_r z_r W_dec_r + b_dec, one all-reduce of B·d_in floats (`_SumOverShards`);
4. backward: the loss is computed identically on every rank from the same x̂, so each partial
   decode receives the full dL/dx̂ without communication, and the gradient of the encoder input
   x − b_dec (each rank's holds only its latents' part) is summed over ranks (`_CopyToShards`,
   one all-reduce of B·d_in floats). b_dec's gradient is then the same on every rank, and so is
   its Adam update.

AuxK selects its top-k_aux dead latents globally, the same way as TopK (not per shard), so a
sharded run computes the one-process loss: a per-shard top-(k_aux/N) is only equal in expectation
when the dead latents are spread evenly, which nothing guarantees. The dead-latent counters are per
shard (each rank counts its own latents' firing: every rank has the whole batch, so nothing is
exchanged). Every shard needs the same number of latents (n a multiple of N).

torch.distributed.nn.functional.all_reduce is not used for step 3: its backward all-reduces the
gradient again, which suits N different losses summed, not one loss replicated on N ranks (it
would give N × the gradient). The two autograd functions below are the replicated-loss pair.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from saelab.util import distributed
from saelab.config import SAEConfig, TrainConfig
from saelab.util.distributed import World
from saelab.errors import ConfigError, DataError
from saelab.formats.folder import save_sae
from saelab.model.initialization import initial_b_dec, unit_rows
from saelab.kernels.decode import DecodeItem, decode
from saelab.kernels.sparse_code import SparseCode
from saelab.kernels.topk_encode import EncodePlan, encode
from saelab.losses import auxk_term, squared_error
from saelab.kernels.plan import SparsePlan
from saelab.model.normalize import Normalizer
from saelab.training.objective import DeadLatentTracker
from saelab.model.sae import SparseAutoencoder, centered_linear
from saelab.step_output import StepOutput, fired_latents, nonzero_values

SHARDED_PARAMS = ("W_enc", "b_enc", "W_dec")  # split by latents; every other tensor is replicated
LATENT_DIM = {"W_enc": 1, "b_enc": 0, "W_dec": 0}  # the dimension each sharded tensor is split along
INIT_BLOCK_LATENTS = 4096  # the init's unit of random draws: at most one block beyond a shard is ever drawn


# ---- the two collectives of a step, with their backward --------------------------------------

class _CopyToShards(torch.autograd.Function):
    """Identity forward; backward sums the gradient over ranks (each rank's covers only its own latents)."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _SumOverShards(torch.autograd.Function):
    """Forward sums the ranks' partial decodes; backward passes dL/dx̂ through (the loss is the same on every rank)."""

    @staticmethod
    def forward(ctx, partial: Tensor, group) -> Tensor:
        total = partial.contiguous().clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def copy_to_shards(x: Tensor, world: World) -> Tensor:
    """x, whose gradient will be summed over the latent shards."""
    return _CopyToShards.apply(x, world.group) if world.parallel else x


def sum_over_shards(partial: Tensor, world: World) -> Tensor:
    """Σ over ranks of `partial`, with the gradient of a loss replicated on every rank."""
    return _SumOverShards.apply(partial, world.group) if world.parallel else partial


# ---- global selection -------------------------------------------------------------------------

def _gather_candidates(cand: Tensor, world: World) -> Tensor:
    """Every rank's candidates stacked along a new first dimension [N, …] (no gradient)."""
    if not world.parallel:
        return cand.unsqueeze(0)
    parts = [torch.empty_like(cand) for _ in range(world.size)]
    dist.all_gather(parts, cand.contiguous(), group=world.group)
    return torch.stack(parts)


def winning_candidates(candidates: Tensor, k: int, rank: int) -> Tensor:
    """Bool [B, k]: which of rank `rank`'s candidates are among each row's k largest of all ranks'.

    `candidates` is [N, B, k], rank r's k candidates per row (−inf where it has none). A −inf
    winner (fewer than k real candidates in all) is no winner.
    """
    n_ranks, rows, per_rank = candidates.shape
    if per_rank != k:
        raise ValueError(f"candidates: {per_rank} per rank, expected k={k}")
    flat = candidates.permute(1, 0, 2).reshape(rows, n_ranks * k)
    values, positions = torch.topk(flat, k, dim=-1, sorted=False)
    mine = (positions // k == rank) & torch.isfinite(values)
    won = torch.zeros(rows, k, dtype=torch.bool, device=candidates.device)
    row = torch.arange(rows, device=candidates.device).unsqueeze(1).expand_as(positions)
    won[row[mine], (positions % k)[mine]] = True
    return won


def global_topk_mask(pre: Tensor, k: int, world: World) -> Tensor:
    """Bool [B, n_local]: this shard's entries among each row's k largest over all shards' latents.

    One all-gather of B·k candidate values per rank; indices never travel, since a candidate's
    position in the gathered tensor names its rank and that rank kept its own local indices.
    """
    values, indices = torch.topk(pre.detach(), min(k, pre.shape[1]), dim=-1, sorted=False)
    return torch.zeros_like(pre, dtype=torch.bool).scatter_(1, indices, _won_per_row(values, k, world))


def _won_per_row(values: Tensor, k: int, world: World) -> Tensor:
    """Bool like `values` [B, m ≤ k]: which of this rank's per-row candidates are among each row's k largest of all ranks'."""
    rows, m = values.shape
    cand = torch.full((rows, k), float("-inf"), dtype=values.dtype, device=values.device)
    cand[:, :m] = values.detach()
    return winning_candidates(_gather_candidates(cand, world), k, world.rank)[:, :m]


def global_batch_threshold(acts: Tensor, keep: int, world: World) -> Tensor | None:
    """The keep-th largest of all shards' `acts` together (None when fewer than `keep` exist anywhere)."""
    flat = acts.detach().flatten()
    m = min(keep, flat.numel())
    cand = torch.full((keep,), float("-inf"), dtype=flat.dtype, device=flat.device)
    if m:
        cand[:m] = torch.topk(flat, m, sorted=False).values
    kth = torch.topk(_gather_candidates(cand, world).flatten(), keep, sorted=False).values.min()
    return kth if torch.isfinite(kth) else None


# ---- the sharded model ------------------------------------------------------------------------

def selection_plan(cfg: SAEConfig) -> SparsePlan | None:
    """The method's training-mode selection when a global top-k over shards computes it exactly, else None.

    That is a plain per-row top-k or batch top-k·B of ReLU'd pre-activations: no extra decodes
    (Multi-TopK, Matryoshka) and no ragged positive set (ReLU).
    """
    act_cls, act_params = cfg.activation_spec()
    plan = act_cls(act_params, cfg.n_latents).train(True).sparse_plan()
    if plan is None or plan.positive or plan.extra_multiple is not None or plan.prefixes:
        return None
    return plan


def check_shardable(cfg: SAEConfig, world: World) -> None:
    """ConfigError unless `cfg` can be split into `world.size` latent shards."""
    if selection_plan(cfg) is None:
        raise ConfigError("method", cfg.method, "latent sharding needs a method whose code is a plain top-k or batch top-k "
                          "selection (a global top-k over shards)")
    if cfg.penalty is not None:
        raise ConfigError("penalty", cfg.penalty, "latent sharding supports no penalty (a TopK-family method sets the sparsity)")
    if cfg.n_latents % world.size:
        raise ConfigError("n_latents", cfg.n_latents, f"must be a multiple of the {world.size} latent shards (equal shards)")
    if cfg.d_in is None:
        raise ConfigError("d_in", None, "unknown; it is read from the activations")


class ShardedSAE(nn.Module):
    """This rank's block of a SparseAutoencoder's latents, with b_dec, the normalizer and the method replicated.

    Shapes: W_enc [d_in, n/N], b_enc [n/N], W_dec [n/N, d_in], b_dec [d_in]; this rank's latents
    are [lo, hi) of the full SAE's. `reconstruct` returns the full x̂ and this shard's code.
    """

    def __init__(self, cfg: SAEConfig, world: World, data: World | None = None):
        super().__init__()
        cfg.validate()
        check_shardable(cfg, world)
        # world: the ranks that split the latents (the same rows); data: the replicas of this shard
        # that train on the other slices of each batch (a 2-D grid; one process when not).
        self.cfg, self.world, self.data = cfg, world, data if data is not None else World()
        n_local = cfg.n_latents // world.size
        self.lo, self.hi = world.rank * n_local, (world.rank + 1) * n_local
        d = cfg.d_in
        self.W_enc = nn.Parameter(torch.zeros(d, n_local))
        self.b_enc = nn.Parameter(torch.zeros(n_local))
        self.W_dec = nn.Parameter(torch.zeros(n_local, d))
        self.b_dec = nn.Parameter(torch.zeros(d))
        act_cls, act_params = cfg.activation_spec()
        self.activation = act_cls(act_params, cfg.n_latents)  # holds k and BatchTopK's replicated threshold
        self.plan = selection_plan(cfg)
        self.normalizer = Normalizer(cfg.normalize, cfg.normalization_factor)

    @property
    def everyone(self) -> World:
        """All ranks of the grid, for what spans both latents and rows (BatchTopK's batch-wide selection)."""
        if not self.data.parallel:
            return self.world
        if not self.world.parallel:
            return self.data
        return World(rank=dist.get_rank(), size=dist.get_world_size())

    @property
    def rows_factor(self) -> int:
        """Global batch rows per rows in hand (the number of data replicas)."""
        return self.data.size

    @property
    def n_local(self) -> int:
        """Latents held by this rank."""
        return self.hi - self.lo

    @torch.no_grad()
    def initialize_from_data(self, sample: Tensor, seed: int) -> None:
        """Fit the normalizer and draw this shard's weights directly, never materializing the full dictionary.

        Latents are drawn in blocks of INIT_BLOCK_LATENTS, block i from a generator seeded by
        (seed, i), so latent j starts the same however many shards there are (a run on N ranks
        equals one on 1 rank): the same distribution as SparseAutoencoder's init, not the same
        numbers (split_sae gives those).
        """
        factor = self.normalizer.fit(sample)
        if factor is not None:
            self.cfg.normalization_factor = factor
        x_n, _ = self.normalizer.normalize(sample)
        transpose = self.cfg.encoder_init == "decoder_transpose"
        for first in range(self.lo - self.lo % INIT_BLOCK_LATENTS, self.hi, INIT_BLOCK_LATENTS):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + first // INIT_BLOCK_LATENTS)
            size = min(INIT_BLOCK_LATENTS, self.cfg.n_latents - first)
            dec = unit_rows(size, self.cfg.d_in, gen)
            enc = dec if transpose else unit_rows(size, self.cfg.d_in, gen)
            lo, hi = max(first, self.lo), min(first + size, self.hi)  # this block's latents that are this shard's
            self.W_dec[lo - self.lo:hi - self.lo] = dec[lo - first:hi - first]
            self.W_enc[:, lo - self.lo:hi - self.lo] = enc[lo - first:hi - first].T
        self.b_enc.zero_()
        self.b_dec.copy_(initial_b_dec(self.cfg.b_dec_init, x_n, self.cfg.d_in))  # the same sample on every rank: the same b_dec

    def pre_activations(self, x_n: Tensor) -> Tensor:
        """This shard's (x_n − b_dec) W_enc + b_enc."""
        return centered_linear(x_n, self.W_enc, self.b_enc, self.b_dec, spread=lambda t: copy_to_shards(t, self.world))

    def code(self, pre: Tensor) -> Tensor:
        """This shard's part of the code, selected over all shards' latents."""
        k = self.activation.params.k
        acts = torch.relu(pre)
        if self.plan.batch:
            if self.training:
                threshold = global_batch_threshold(acts, k * pre.shape[0] * self.rows_factor, self.everyone)
                return acts if threshold is None else acts * (acts >= threshold)
            if self.activation.threshold.item() >= 0:
                return acts * (acts > self.activation.threshold)  # per latent: no exchange at inference
        return acts * global_topk_mask(pre, k, self.world)

    def decode_normalized(self, z: Tensor) -> Tensor:
        """The full reconstruction in the normalized space, from this shard's code (one all-reduce)."""
        return sum_over_shards(z @ self.W_dec, self.world) + self.b_dec

    def reconstruct(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(raw-space reconstruction, this shard's code) of raw activations."""
        if x.shape[-1] != self.cfg.d_in:
            raise DataError(f"x: last dimension is {x.shape[-1]}, the SAE expects d_in={self.cfg.d_in}")
        x_n, ctx = self.normalizer.normalize(x)
        z = self.code(self.pre_activations(x_n))
        return self.normalizer.denormalize(self.decode_normalized(z), ctx), z

    def forward(self, x: Tensor) -> Tensor:
        """Raw activations → raw reconstruction (the same on every rank)."""
        return self.reconstruct(x)[0]

    @torch.no_grad()
    def observe(self, values: Tensor) -> None:
        """Update the method's replicated statistics from this shard's non-zero code values."""
        # BatchTopK folds in the minimum over ranks of the smallest kept value; inside
        # global_batch its batch_min is exactly that minimum, so every rank keeps one threshold.
        with distributed.global_batch(self.everyone):
            self.activation.observe(values)

    # Both are row-wise, so a shard's rows are treated exactly as in the full SAE.
    project_decoder_grad = SparseAutoencoder.project_decoder_grad
    normalize_decoder = SparseAutoencoder.normalize_decoder


# ---- split and gather ---------------------------------------------------------------------------

@torch.no_grad()
def split_sae(sae: SparseAutoencoder, world: World, data: World | None = None) -> ShardedSAE:
    """Rank `world.rank`'s shard of a full SAE (local slicing: no process group needed)."""
    shard = ShardedSAE(copy.deepcopy(sae.cfg), world, data)
    lo, hi = shard.lo, shard.hi
    shard.W_enc.copy_(sae.W_enc[:, lo:hi])
    shard.b_enc.copy_(sae.b_enc[lo:hi])
    shard.W_dec.copy_(sae.W_dec[lo:hi])
    shard.b_dec.copy_(sae.b_dec)
    shard.normalizer.load_state_dict(sae.normalizer.state_dict())
    shard.activation.load_state_dict(sae.activation.state_dict())
    shard.train(sae.training)
    return shard.to(sae.device)


@torch.no_grad()
def join_shards(shards: list[ShardedSAE]) -> SparseAutoencoder:
    """The full SAE whose shards, in rank order, are `shards` (replicated tensors taken from the first)."""
    if not shards:
        raise ValueError("shards: empty")
    ranks = [s.world.rank for s in shards]
    if ranks != list(range(shards[0].world.size)):
        raise ValueError(f"shards: ranks {ranks}, expected 0..{shards[0].world.size - 1} in order")
    return _assemble(shards[0], [s.W_enc for s in shards], [s.b_enc for s in shards], [s.W_dec for s in shards])


def _assemble(first: ShardedSAE, w_enc: list[Tensor], b_enc: list[Tensor], w_dec: list[Tensor]) -> SparseAutoencoder:
    sae = SparseAutoencoder(copy.deepcopy(first.cfg))
    sae.W_enc.copy_(torch.cat(list(w_enc), dim=1))
    sae.b_enc.copy_(torch.cat(list(b_enc)))
    sae.W_dec.copy_(torch.cat(list(w_dec)))
    sae.b_dec.copy_(first.b_dec)
    sae.normalizer.load_state_dict(first.normalizer.state_dict())
    sae.activation.load_state_dict(first.activation.state_dict())
    sae.train(first.training)
    return sae


@torch.no_grad()
def gather_sae(shard: ShardedSAE, dst: int = 0) -> SparseAutoencoder | None:
    """The full SAE on rank `dst` (on the CPU), None on the others; every rank must call it."""
    world = shard.world
    if not world.parallel:
        return join_shards([shard])
    parts = []
    for name in SHARDED_PARAMS:
        local = getattr(shard, name).detach().contiguous()
        if world.rank != dst:
            dist.send(local, dst=world.global_rank(dst))
            continue
        # One shard at a time through one buffer on the shard's device (NCCL needs it there), so
        # rank dst's device never holds more than its own shard twice; the whole lands on the CPU.
        buffer, bucket = torch.empty_like(local), []
        for r in range(world.size):
            if r == dst:
                bucket.append(local.cpu())
            else:
                dist.recv(buffer, src=world.global_rank(r))
                bucket.append(buffer.to("cpu", copy=True))  # a copy: the next recv overwrites the buffer
        parts.append(bucket)
    if world.rank != dst:
        return None
    return _assemble(shard, *parts)


# ---- the objective and one training step ------------------------------------------------------

def sharded_auxk_loss(shard: ShardedSAE, x: Tensor, x_hat: Tensor, pre: Tensor, dead: Tensor, k_aux: int) -> Tensor:
    """AuxK over all shards' dead latents: the global top-k_aux, reconstructed through the summed partial decodes."""
    n_dead = _global_dead_count(dead, shard.world)
    if n_dead == 0:
        return pre.new_zeros(())
    k = min(k_aux, n_dead)
    masked = pre.masked_fill(~dead, float("-inf"))
    z_aux = torch.relu(pre) * global_topk_mask(masked, k, shard.world)
    residual = (x - x_hat).detach()
    return auxk_term(sum_over_shards(z_aux @ shard.W_dec, shard.world), residual, x)


def uses_sparse_kernels(shard: ShardedSAE) -> bool:
    """Whether this shard's training step runs on the sparse kernels (kernel auto or sparse; dense is the reference)."""
    return shard.cfg.kernel != "dense"


def _global_dead_count(dead: Tensor, world: World) -> int:
    n_dead = dead.sum().reshape(1).long()
    if world.parallel:
        dist.all_reduce(n_dead, group=world.group)  # every rank must take the same branch (the other one exchanges)
    return int(n_dead)


def _winners(code: SparseCode, values: Tensor, won: Tensor) -> tuple[SparseCode, Tensor, Tensor]:
    """(the code of the entries that won, their values — differentiable —, their flat places in `code`)."""
    keep = won.reshape(-1).nonzero().squeeze(1)
    kept = values.reshape(-1)[keep]
    # Rows stay in order (`keep` ascends), so the CSR grouping the kernels rely on holds.
    return SparseCode(code.n_rows, code.latents[keep], kept.detach(), rows=code.rows[keep]), kept, keep


def sparse_sharded_step(shard: ShardedSAE, x_raw: Tensor, dead: Tensor | None) -> StepOutput:
    """sharded_step on the sparse kernels: this shard's local top-k as candidates, the global winners decoded.

    Each rank encodes its latents with the one-process sparse encoder (`kernels.topk_encode`):
    its k largest per row (BatchTopK: its k·B largest of the batch), and AuxK's top-k_aux of its
    dead latents. Only the candidates that win globally stay in its codes (EncodePlan.main_keep,
    aux_keep), so the one-process decoder and the encoder's backward run on this shard's winners
    alone: with N shards each rank decodes about 1/N of the k (and k_aux) entries per row. b_dec
    enters the encoder through copy_to_shards: its encoder-side gradient covers this shard's
    latents only and is summed over ranks ([d] floats, as on the dense path: sae.centered_linear).
    """
    cfg, world = shard.cfg, shard.world
    x, _ = shard.normalizer.normalize(x_raw)
    rows, k = x.shape[0], shard.activation.params.k
    plan = EncodePlan()
    if shard.plan.batch:
        plan.batch_k = k
    else:
        plan.k = min(k, shard.n_local)
    n_dead = _global_dead_count(dead, world) if cfg.auxk and dead is not None else 0
    if n_dead and bool(dead.any()):
        plan.dead = dead.nonzero().squeeze(1).to(x.device)
        plan.k_aux = min(cfg.k_aux, n_dead)
    z_main, z_aux = encode(x, shard.W_enc, shard.b_enc, copy_to_shards(shard.b_dec, world), plan)
    if shard.plan.batch:
        threshold = global_batch_threshold(z_main, k * rows * shard.rows_factor, shard.everyone)
        won = torch.ones_like(z_main, dtype=torch.bool) if threshold is None else z_main.detach() >= threshold
    else:
        won = _won_per_row(z_main.view(rows, -1), k, world)
    plan.main, z, plan.main_keep = _winners(plan.main, z_main, won)
    items, values = [DecodeItem(plan.main)], [z]
    if n_dead:
        k_aux = min(cfg.k_aux, n_dead)
        if plan.aux is not None:
            won = _won_per_row(z_aux.view(rows, -1), k_aux, world)
            plan.aux, z_aux, plan.aux_keep = _winners(plan.aux, z_aux, won)
            items.append(DecodeItem(plan.aux))  # a ragged code: decoded by rows
            values.append(z_aux)
        else:  # no dead latent here: this rank still offers (no) candidates to the others' selection
            _won_per_row(x.new_empty(rows, 0), k_aux, world)
    decoded = decode(shard.W_dec, items, values, plan)
    x_hat = sum_over_shards(decoded[0], world) + shard.b_dec
    losses = {"mse": squared_error(x_hat, x)}
    if cfg.auxk and dead is not None:
        if n_dead:
            aux_partial = decoded[1] if len(decoded) > 1 else x.new_zeros(x.shape)
            residual = (x - x_hat).detach()
            losses["auxk"] = cfg.aux_coef * auxk_term(sum_over_shards(aux_partial, world), residual, x)
        else:
            losses["auxk"] = cfg.aux_coef * x.new_zeros(())
    return StepOutput(losses=losses, x=x, pre=None, z=plan.main.with_values(z), x_hat=x_hat)


def sharded_step(shard: ShardedSAE, x_raw: Tensor, dead: Tensor | None) -> StepOutput:
    """Every loss term of a raw batch, equal on every rank; `pre` and `z` are this shard's [B, n/N]."""
    if uses_sparse_kernels(shard):
        return sparse_sharded_step(shard, x_raw, dead)
    cfg = shard.cfg
    x, _ = shard.normalizer.normalize(x_raw)
    pre = shard.pre_activations(x)
    z = shard.code(pre)
    x_hat = shard.decode_normalized(z)
    losses = {"mse": squared_error(x_hat, x)}
    if cfg.auxk and dead is not None:
        losses["auxk"] = cfg.aux_coef * sharded_auxk_loss(shard, x, x_hat, pre, dead, cfg.k_aux)
    return StepOutput(losses=losses, x=x, pre=pre, z=z, x_hat=x_hat)


@dataclass
class ShardedMember:
    """One latent-sharded SAE being trained: this rank's shard, its Adam state and its dead-latent counters."""

    shard: ShardedSAE
    optimizer: torch.optim.Optimizer
    tracker: DeadLatentTracker  # this shard's latents only


def sharded_member(shard: ShardedSAE, train: TrainConfig) -> ShardedMember:
    """A shard with the trainer's Adam settings and a tracker of its own latents."""
    opt = torch.optim.Adam(shard.parameters(), lr=shard.cfg.effective_lr, betas=tuple(train.betas), eps=train.adam_eps, fused=True)
    return ShardedMember(shard, opt, DeadLatentTracker(shard.n_local, shard.cfg.dead_tokens, shard.W_enc.device))


def clip_sharded_grad_norm(shard: ShardedSAE, max_norm: float) -> Tensor:
    """Clip to the full SAE's gradient norm: the sharded squares summed over ranks, b_dec's counted once."""
    grads = [getattr(shard, n).grad for n in SHARDED_PARAMS if getattr(shard, n).grad is not None]
    local = sum((g.double().pow(2).sum() for g in grads), torch.zeros((), dtype=torch.float64, device=shard.W_enc.device))
    if shard.world.parallel:
        dist.all_reduce(local, group=shard.world.group)
    if shard.b_dec.grad is not None:
        local = local + shard.b_dec.grad.double().pow(2).sum()
    total = local.sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)  # torch's clip_grad_norm_ rule
    for p in shard.parameters():
        if p.grad is not None:
            p.grad.mul_(scale.to(p.grad.dtype))
    return total


def sharded_train_step(m: ShardedMember, x: Tensor, lr: float, grad_clip: float | None = None) -> StepOutput:
    """One optimizer step of a sharded SAE on a raw batch (the shard's ranks pass the same batch; replicas their slices)."""
    for group in m.optimizer.param_groups:
        group["lr"] = lr
    shard = m.shard
    dead = m.tracker.dead_mask() if shard.cfg.auxk else None
    # On a grid x is this replica's slice: batch variances, the gradient and the dead-latent
    # counters are the global batch's (means over the data group, a latent fired in any replica).
    with distributed.global_batch(shard.data):
        out = sharded_step(shard, x, dead)
        m.optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        distributed.average_gradients(shard.parameters())
        if shard.cfg.decoder_unit_norm:
            shard.project_decoder_grad()
        if grad_clip is not None:
            clip_sharded_grad_norm(shard, grad_clip)
        m.optimizer.step()
        if shard.cfg.decoder_unit_norm:
            shard.normalize_decoder()
        with torch.no_grad():
            if shard.activation.observes_codes:  # the same class on every rank: all take part in its collective, or none
                shard.observe(nonzero_values(out.z).detach())
            m.tracker.update(distributed.any_rank(fired_latents(out.z, shard.n_local)), distributed.global_rows(x.shape[0]))
    return out


def train_sharded(cfg: SAEConfig, train: TrainConfig, batches: Iterable[Tensor], sample: Tensor,
                  world: World | None = None, out: str | Path | None = None, seed: int = 0) -> SparseAutoencoder | None:
    """Train a latent-sharded SAE on `batches` (the same raw batches on every rank); the full SAE on rank 0.

    Every rank initializes its own shard from `sample` (see ShardedSAE.initialize_from_data), so
    no rank ever holds the whole dictionary until the end, when rank 0 gathers it and, given
    `out`, saves a normal saelab folder. The learning rate is cfg.effective_lr (constant).
    """
    world = world if world is not None else distributed.init_from_env()
    cfg = copy.deepcopy(cfg)
    cfg.d_in = sample.shape[-1] if cfg.d_in is None else cfg.d_in
    shard = ShardedSAE(cfg, world)
    shard.initialize_from_data(sample, seed)
    shard.to(train.device).train()
    m = sharded_member(shard, train)
    steps = 0
    for x in batches:
        sharded_train_step(m, x.to(train.device), cfg.effective_lr, train.grad_clip)
        steps += 1
    full = gather_sae(shard)
    if full is not None and out is not None:
        save_sae(full.eval(), out, {"latent_shards": world.size, "steps": steps})
    return full
