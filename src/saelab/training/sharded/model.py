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

import torch
import torch.distributed as dist
from torch import Tensor, nn

from saelab.config import SAEConfig
from saelab.errors import ConfigError, DataError
from saelab.kernels.plan import SparsePlan
from saelab.methods.resolve import resolve, resolve_sae
from saelab.model.initialization import initial_b_dec, unit_rows
from saelab.model.normalize import Normalizer
from saelab.model.sae import SparseAutoencoder, centered_linear
from saelab.training.sharded.collectives import (
    copy_to_shards,
    global_batch_threshold,
    global_topk_mask,
    sum_over_shards,
)
from saelab.util import distributed
from saelab.util.distributed import World

SHARDED_PARAMS = ("W_enc", "b_enc", "W_dec")  # split by latents; every other tensor is replicated
LATENT_DIM = {"W_enc": 1, "b_enc": 0, "W_dec": 0}  # the dimension each sharded tensor is split along
INIT_BLOCK_LATENTS = 4096  # the init's unit of random draws: at most one block beyond a shard is ever drawn


# ---- the sharded model ------------------------------------------------------------------------


def selection_plan(cfg: SAEConfig) -> SparsePlan | None:
    """The method's training-mode selection when a global top-k over shards computes it exactly, else None.

    That is a plain per-row top-k or batch top-k·B of ReLU'd pre-activations: no extra decodes
    (Multi-TopK, Matryoshka) and no ragged positive set (ReLU).
    """
    act_cls, act_params = resolve(cfg).activation
    plan = act_cls(act_params, cfg.n_latents).train(True).sparse_plan()
    if plan is None or plan.positive or plan.extra_multiple is not None or plan.prefixes:
        return None
    return plan


def check_shardable(cfg: SAEConfig, world: World) -> None:
    """ConfigError unless `cfg` can be split into `world.size` latent shards."""
    if selection_plan(cfg) is None:
        raise ConfigError(
            "method",
            cfg.method,
            "latent sharding needs a method whose code is a plain top-k or batch top-k "
            "selection (a global top-k over shards)",
        )
    if cfg.penalty is not None:
        raise ConfigError(
            "penalty", cfg.penalty, "latent sharding supports no penalty (a TopK-family method sets the sparsity)"
        )
    if cfg.n_latents % world.size:
        raise ConfigError(
            "n_latents", cfg.n_latents, f"must be a multiple of the {world.size} latent shards (equal shards)"
        )
    if cfg.d_in is None:
        raise ConfigError("d_in", None, "unknown; it is read from the activations")


class ShardedSAE(nn.Module):
    """This rank's block of a SparseAutoencoder's latents, with b_dec, the normalizer and the method replicated.

    Shapes: W_enc [d_in, n/N], b_enc [n/N], W_dec [n/N, d_in], b_dec [d_in]; this rank's latents
    are [lo, hi) of the full SAE's. `reconstruct` returns the full x̂ and this shard's code.
    """

    def __init__(self, cfg: SAEConfig, world: World, data: World | None = None):
        super().__init__()
        cfg = resolve_sae(cfg)
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
        act_cls, act_params = resolve(cfg).activation
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
            self.W_dec[lo - self.lo : hi - self.lo] = dec[lo - first : hi - first]
            self.W_enc[:, lo - self.lo : hi - self.lo] = enc[lo - first : hi - first].T
        self.b_enc.zero_()
        self.b_dec.copy_(
            initial_b_dec(self.cfg.b_dec_init, x_n, self.cfg.d_in)
        )  # the same sample on every rank: the same b_dec

    def pre_activations(self, x_n: Tensor) -> Tensor:
        """This shard's (x_n − b_dec) W_enc + b_enc."""
        return centered_linear(x_n, self.W_enc, self.b_enc, self.b_dec, spread=lambda t: copy_to_shards(t, self.world))

    def code(self, pre: Tensor) -> Tensor:
        """This shard's part of the code, selected over all shards' latents."""
        k = self.plan.k
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
