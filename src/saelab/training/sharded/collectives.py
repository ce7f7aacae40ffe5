"""The collectives of a latent-sharded step (with their backward) and the global top-k selection over shards."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from saelab.util.distributed import World

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
