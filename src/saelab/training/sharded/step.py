"""The latent-sharded objective and one training step (dense reference and sparse kernels), plus its member."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from saelab.config import TrainConfig
from saelab.kernels.decode import DecodeItem, decode
from saelab.kernels.sparse_code import SparseCode
from saelab.kernels.topk_encode import EncodeState, encode
from saelab.losses import auxk_term, squared_error
from saelab.step_output import StepOutput, fired_latents, nonzero_values
from saelab.training.objective import DeadLatentTracker
from saelab.training.sharded.collectives import (
    _won_per_row,
    copy_to_shards,
    global_batch_threshold,
    global_topk_mask,
    sum_over_shards,
)
from saelab.training.sharded.model import (
    SHARDED_PARAMS,
    ShardedSAE,
)
from saelab.util import distributed
from saelab.util.distributed import World

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
    dead latents. Only the candidates that win globally stay in its codes (EncodeState.main_keep,
    aux_keep), so the one-process decoder and the encoder's backward run on this shard's winners
    alone: with N shards each rank decodes about 1/N of the k (and k_aux) entries per row. b_dec
    enters the encoder through copy_to_shards: its encoder-side gradient covers this shard's
    latents only and is summed over ranks ([d] floats, as on the dense path: sae.centered_linear).
    """
    cfg, world = shard.cfg, shard.world
    x, _ = shard.normalizer.normalize(x_raw)
    rows, k = x.shape[0], shard.plan.k
    # This shard's candidates by the same plan: its top-min(k, n/N) per row, or its top k·B of the batch.
    state = EncodeState(shard.plan)
    n_dead = _global_dead_count(dead, world) if cfg.auxk and dead is not None else 0
    if n_dead and bool(dead.any()):
        state.dead = dead.nonzero().squeeze(1).to(x.device)
        state.k_aux = min(cfg.k_aux, n_dead)
    z_main, z_aux = encode(x, shard.W_enc, shard.b_enc, copy_to_shards(shard.b_dec, world), state)
    if shard.plan.batch:
        threshold = global_batch_threshold(z_main, k * rows * shard.rows_factor, shard.everyone)
        won = torch.ones_like(z_main, dtype=torch.bool) if threshold is None else z_main.detach() >= threshold
    else:
        won = _won_per_row(z_main.view(rows, -1), k, world)
    state.main, z, state.main_keep = _winners(state.main, z_main, won)
    items, values = [DecodeItem(state.main)], [z]
    if n_dead:
        k_aux = min(cfg.k_aux, n_dead)
        if state.aux is not None:
            won = _won_per_row(z_aux.view(rows, -1), k_aux, world)
            state.aux, z_aux, state.aux_keep = _winners(state.aux, z_aux, won)
            items.append(DecodeItem(state.aux))  # a ragged code: decoded by rows
            values.append(z_aux)
        else:  # no dead latent here: this rank still offers (no) candidates to the others' selection
            _won_per_row(x.new_empty(rows, 0), k_aux, world)
    decoded = decode(shard.W_dec, items, values, state)
    x_hat = sum_over_shards(decoded[0], world) + shard.b_dec
    losses = {"mse": squared_error(x_hat, x)}
    if cfg.auxk and dead is not None:
        if n_dead:
            aux_partial = decoded[1] if len(decoded) > 1 else x.new_zeros(x.shape)
            residual = (x - x_hat).detach()
            losses["auxk"] = cfg.aux_coef * auxk_term(sum_over_shards(aux_partial, world), residual, x)
        else:
            losses["auxk"] = cfg.aux_coef * x.new_zeros(())
    return StepOutput(losses=losses, x=x, pre=None, z=state.main.with_values(z), x_hat=x_hat)


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
    opt = torch.optim.Adam(
        shard.parameters(), lr=shard.cfg.effective_lr, betas=tuple(train.betas), eps=train.adam_eps, fused=True
    )
    return ShardedMember(shard, opt, DeadLatentTracker(shard.n_local, shard.cfg.dead_tokens, shard.W_enc.device))


def clip_sharded_grad_norm(shard: ShardedSAE, max_norm: float) -> Tensor:
    """Clip to the full SAE's gradient norm: the sharded squares summed over ranks, b_dec's counted once."""
    grads = [getattr(shard, n).grad for n in SHARDED_PARAMS if getattr(shard, n).grad is not None]
    local = sum(
        (g.double().pow(2).sum() for g in grads), torch.zeros((), dtype=torch.float64, device=shard.W_enc.device)
    )
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
            if (
                shard.activation.observes_codes
            ):  # the same class on every rank: all take part in its collective, or none
                shard.observe(nonzero_values(out.z).detach())
            m.tracker.update(
                distributed.any_rank(fired_latents(out.z, shard.n_local)), distributed.global_rows(x.shape[0])
            )
    return out
