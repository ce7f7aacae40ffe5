"""Data-parallel training on torch.distributed: the process group, and reductions over the global batch.

`torchrun --nproc-per-node N -m saelab train …` starts N processes with RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT set; `init_from_env` joins them into one process group
(gloo for CPU tensors, NCCL for CUDA ones). Without those variables it returns the one-process
World and nothing here communicates.

Every rank builds the same global batch (same stream, same seed) and trains on its contiguous
slice of B/N rows (`World.shard`). Each loss term is a mean over rows, so the mean over ranks of
the per-rank gradients is the gradient of the global batch (`average_gradients`). Inside
`global_batch(world)` the few quantities of a step that are not means over rows see the whole
batch: `batch_mean` (AuxK's batch variances), `kth_largest` (BatchTopK's threshold), `batch_min`
(BatchTopK's inference threshold), `any_rank` (the dead-latent counters) and `rank_mean` (logged
metrics, the target-L0 controller's L0). Outside that context they are local and free, so
evaluation, which only rank 0 runs, never waits for a peer.

A World may also be a subset of the processes (`World.group`, `World.members`): `grid` cuts the
ranks into latent groups (each holds one SAE split by latents, see latent_sharding) and data groups
(the replicas of one shard), and every reduction here runs over the group of the World in use.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from saelab.errors import ConfigError, SaelabError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    size: int = 1
    # A subset of the processes (latent sharding on a grid): its process group and the members'
    # global ranks, in group-rank order. None: the default group, whose ranks are the global ones.
    group: object | None = field(default=None, compare=False, repr=False)
    members: tuple[int, ...] | None = None

    def global_rank(self, rank: int) -> int:
        """The global rank of this world's rank `rank`."""
        return rank if self.members is None else self.members[rank]

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """Whether there is more than one process."""
        return self.size > 1

    def shard(self, x: Tensor) -> Tensor:
        """This rank's contiguous slice of a global batch (all of it in one process)."""
        if not self.parallel:
            return x
        rows = x.shape[0] // self.size
        return x[self.rank * rows : (self.rank + 1) * rows]

    def check_batch(self, batch_size: int) -> None:
        """ConfigError unless the global batch splits into equal slices (unequal ones would weight rows unequally)."""
        if batch_size % self.size:
            raise ConfigError(
                "batch_size",
                batch_size,
                f"must be a multiple of the {self.size} processes (each trains on an equal slice)",
            )

    def barrier(self) -> None:
        """Wait for every rank (no-op in one process)."""
        if self.parallel:
            dist.barrier(group=self.group)

    def wait_for_all(self, timeout: timedelta = timedelta(days=7)) -> None:
        """Wait up to `timeout` for every rank: for ranks that finish uneven shares of work far apart.

        A plain barrier gives up after the process group's timeout (30 minutes for gloo); gloo's
        monitored barrier takes its own, and names a rank that never arrives. Other backends keep
        their process group's timeout.
        """
        if not self.parallel:
            return
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(group=self.group, timeout=timeout, wait_all_ranks=True)
        else:
            dist.barrier(group=self.group)

    def any_flag(self, flag: bool) -> bool:
        """True on every rank if it is True on any rank (e.g. a stop signal one rank received)."""
        if not self.parallel:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return bool(t.item())

    def all_gather(self, obj) -> list:
        """Every rank's picklable `obj`, in rank order, on every rank ([obj] in one process)."""
        if not self.parallel:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def on_main(self, fn):
        """Run `fn` on rank 0 only; every rank returns its result or raises its error.

        Rank 0 re-raises the original exception; the others raise a SaelabError quoting it, so no
        rank is left waiting at a collective that rank 0 will never reach.
        """
        if not self.parallel:
            return fn()
        result, error, exc = None, None, None
        if self.is_main:
            try:
                result = fn()
            except BaseException as e:  # noqa: BLE001 — re-raised below after the others are told
                exc, error = e, f"{type(e).__name__}: {e}"
        box = [result, error]
        dist.broadcast_object_list(box, src=self.global_rank(0), group=self.group)
        if exc is not None:
            raise exc
        if box[1] is not None:
            raise SaelabError(f"rank 0 stopped: {box[1]}")
        return box[0]


_world = World()
_active: World | None = None  # set while a training step runs on a slice of a global batch


def init_from_env() -> World:
    """Join the process group torchrun described in the environment, once; the one-process World otherwise."""
    global _world
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return _world
    if not dist.is_initialized():
        # The trainer keeps its tensors on the CPU; NCCL needs CUDA tensors, so gloo unless asked.
        backend = os.environ.get("SAELAB_DIST_BACKEND", "gloo")
        dist.init_process_group(backend=backend)
        # Leave the group before the interpreter finalizes: a process that exits still in it lets
        # gloo's worker threads die mid-teardown (SIGABRT, "terminate called without an active
        # exception", after a complete run; pytorch/pytorch#190489).
        atexit.register(shutdown)
    _world = World(rank=dist.get_rank(), size=dist.get_world_size())
    return _world


def current() -> World:
    """The World set by the last `init_from_env` (one process before it)."""
    return _world


def grid(world: World, latent_shards: int) -> tuple[World, World]:
    """(latent world, data world) of this rank on a grid of world.size / latent_shards replicas × latent_shards shards.

    Global rank g is shard g mod G of replica g // G: a latent group is G consecutive ranks (put
    them on one node, where the per-step exchanges are), a data group the ranks holding the same
    shard in every replica. Every rank creates every group, in the same order, as torch requires.
    """
    if latent_shards < 1 or world.size % latent_shards:
        raise ConfigError("latent_shards", latent_shards, f"must divide the {world.size} processes (replicas × shards)")
    replicas = world.size // latent_shards
    if replicas == 1:
        return world, World()
    if latent_shards == 1:
        return World(), world
    latent_groups = [tuple(range(r * latent_shards, (r + 1) * latent_shards)) for r in range(replicas)]
    data_groups = [tuple(range(s, world.size, latent_shards)) for s in range(latent_shards)]
    made = {ranks: dist.new_group(list(ranks)) for ranks in latent_groups + data_groups}
    replica, shard = divmod(world.rank, latent_shards)
    latent = World(rank=shard, size=latent_shards, group=made[latent_groups[replica]], members=latent_groups[replica])
    data = World(rank=replica, size=replicas, group=made[data_groups[shard]], members=data_groups[shard])
    return latent, data


def in_group() -> bool:
    """Whether this process is in a torch.distributed process group (a torchrun rank that joined it)."""
    return dist.is_available() and dist.is_initialized()


def shutdown() -> None:
    """Leave the process group (after training), so the process exits without gloo's warnings."""
    global _world
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _world = World()


@contextlib.contextmanager
def global_batch(world: World):
    """Context: the batch in hand is this rank's slice of `world`'s global batch (no-op in one process)."""
    global _active
    before = _active
    _active = world if world.parallel else None
    try:
        yield
    finally:
        _active = before


def _reduce(t: Tensor, op=None) -> Tensor:
    dist.all_reduce(t, op=op if op is not None else dist.ReduceOp.SUM, group=_active.group)
    return t


def average_gradients(params) -> None:
    """Replace every .grad by its mean over ranks: one all-reduce of one flat buffer.

    Called after backward and before anything reads the gradient (decoder projection, clipping,
    Adam), which therefore all see the global-batch gradient. Parameters without a gradient on
    this rank take part as zeros, so every rank sends the same buffer layout.
    """
    world = _active
    if world is None:
        return
    params = [p for p in params]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    _reduce(flat).div_(world.size)
    offset = 0
    for p in params:
        n = p.numel()
        chunk = flat[offset : offset + n].view(p.shape)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        offset += n


def batch_mean(t: Tensor) -> Tensor:
    """Mean over ranks of a per-rank mean over rows: the global batch's mean (equal slices)."""
    world = _active
    if world is None:
        return t
    return _reduce(t.detach().clone()).div_(world.size)


def global_rows(rows: int) -> int:
    """Rows in the global batch, given this rank's slice."""
    return rows * _active.size if _active is not None else rows


def any_rank(mask: Tensor) -> Tensor:
    """Bool mask true where it is true on any rank (a latent fired if it fired on any rank)."""
    if _active is None:
        return mask
    return _reduce(mask.to(torch.uint8), dist.ReduceOp.MAX).bool()


def batch_min(value: Tensor) -> Tensor:
    """Minimum over ranks of a scalar (+inf stands for "none here")."""
    if _active is None:
        return value
    return _reduce(value.detach().reshape(1).clone(), dist.ReduceOp.MIN).reshape(())


def rank_mean(values: list[float]) -> list[float]:
    """Mean over ranks of per-rank numbers (each a mean over an equal slice: the global mean)."""
    if _active is None:
        return values
    t = _reduce(torch.tensor(values, dtype=torch.float64))
    return (t / _active.size).tolist()


def kth_largest(values: Tensor, k: int) -> Tensor | None:
    """The k-th largest of all ranks' `values` together (None in one process, or when fewer than k exist).

    Each rank sends its own k largest (padded with −inf): the global k largest are among them.
    """
    if _active is None:
        return None
    top = torch.full((k,), float("-inf"), dtype=values.dtype, device=values.device)
    m = min(k, values.numel())
    if m:
        top[:m] = torch.topk(values, m, sorted=False).values
    parts = [torch.empty_like(top) for _ in range(_active.size)]
    dist.all_gather(parts, top, group=_active.group)
    kth = torch.topk(torch.cat(parts), k, sorted=False).values.min()
    return kth if torch.isfinite(kth) else None
