"""Latent-sharded SAEs: `torchrun --nproc-per-node N -m saelab train --shard-latents …`.

It is the Trainer (the same loop: stream, schedule, logs, signals, checkpoints, resume and final
evaluation) given the LatentSharded strategy (training.strategy), which changes four things:

- the ranks of a latent group read each whole batch (no slicing by rows) and hold n/G latents each
  of the one SAE (`sharded.model.ShardedSAE`, initialized shard by shard, so no rank ever holds
  the whole dictionary until the end). With `latent_shards` G < N the N/G groups are data-parallel
  replicas on a grid (`distributed.grid`): each trains on its slice of every batch, and the ranks
  holding the same shard average their gradients;
- a step is `sharded.step.sharded_train_step`; logged L0 and dead fraction are summed over the
  shards' latents (the loss terms and NMSE are the same on every rank already);
- a checkpoint is one file per shard (written by the first replica) under `checkpoint.shards/<tag>/` plus rank 0's
  `checkpoint.safetensors`, which names the tag. The tag is new at every checkpoint and the old
  tag's folder goes only after the new `checkpoint.safetensors` is on disk, so a kill at any point
  leaves a complete set. Resume re-slices the saved shards, so it works with any number of ranks
  that divides n (latent j's weights, Adam moments and dead counter move with it);
- at the end rank 0 gathers the shards into a normal SparseAutoencoder, evaluates it and writes
  the folder (`latent_shards` in saelab.json says how it was trained).
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import zlib
from pathlib import Path
from typing import Callable

import torch

from saelab.config import RunConfig
from saelab.data.store import ActivationStore
from saelab.errors import ConfigError, DataError
from saelab.methods.resolve import display_name
from saelab.step_output import StepOutput
from saelab.training.checkpoint import SHARD_CHECKPOINT_DIR, load_checkpoint, save_checkpoint
from saelab.training.member import Member
from saelab.training.sharded.model import LATENT_DIM, ShardedSAE, check_shardable, gather_sae
from saelab.training.sharded.step import ShardedMember, sharded_member, sharded_train_step
from saelab.training.strategy import Strategy
from saelab.training.trainer import CHECKPOINT, Trainer
from saelab.util import distributed

SHARD_DIR = SHARD_CHECKPOINT_DIR


def shard_file(rank: int, size: int) -> str:
    """The file name of rank `rank`'s part of a checkpoint written by `size` ranks."""
    return f"rank{rank}-of-{size}.safetensors"


def _latent_slice(parts: list[dict], key, name: str, first: int, lo: int, hi: int) -> torch.Tensor:
    """Latents [lo, hi) of a tensor whose consecutive saved shards are `parts` (the first starting at latent `first`)."""
    dim = LATENT_DIM.get(name, 0)
    whole = torch.cat([key(p) for p in parts], dim=dim)
    return whole.narrow(dim, lo - first, hi - lo).clone()


class LatentSharded(Strategy):
    """One SAE whose latents are split over the ranks (data-parallel replicas of that split when latent_shards < N)."""

    def __init__(self, run: RunConfig, world: distributed.World):
        super().__init__(run, world)
        if len(run.saes) != 1:
            raise ConfigError(
                "sae",
                len(run.saes),
                "a latent-sharded run trains one SAE (train several one after another, or drop --shard-latents)",
            )
        t, cfg = run.train, run.saes[0]
        if t.dtype != "float32":
            raise ConfigError("dtype", t.dtype, "latent-sharded steps run in float32")
        self.latent, self.data = distributed.grid(world, t.latent_shards or world.size)  # refuses G not dividing N
        if t.batch_size % self.data.size:
            raise ConfigError(
                "batch_size",
                t.batch_size,
                f"must be a multiple of the {self.data.size} data-parallel replicas (each trains on an equal slice)",
            )
        check_shardable(dataclasses.replace(cfg, d_in=cfg.d_in or 1), self.latent)  # method, penalty, n a multiple of G

    def local_batch(self, x: torch.Tensor) -> torch.Tensor:
        """The replica's rows: every shard of a replica encodes them."""
        return self.data.shard(x)

    def build_members(
        self, run: RunConfig, d_in: int, sample: Callable[[], torch.Tensor], dirs: list[Path]
    ) -> list[Member]:
        """This rank's shard of the one SAE, initialized shard by shard (no rank holds the whole dictionary)."""
        t = run.train
        cfg = run.saes[0]
        if cfg.d_in is not None and cfg.d_in != d_in:
            raise DataError(f"d_in={cfg.d_in} in the config, but {t.activations} has d_in={d_in}")
        cfg.d_in = d_in
        shard = ShardedSAE(cfg, self.latent, self.data)  # holds cfg itself: the normalizer's fitted factor lands in it
        shard.initialize_from_data(sample(), zlib.crc32(f"{t.seed}:{display_name(cfg)}".encode()))
        shard.to(t.device).train()
        sm = sharded_member(shard, t)
        return [Member(cfg, shard, sm.optimizer, sm.tracker, dirs[0], cfg.effective_lr)]

    def step(self, m: Member, x: torch.Tensor, step: int, lr: float, grad_clip: float | None) -> StepOutput:
        """sharded_train_step (no target_l0 controller: a TopK-family method has none)."""
        return sharded_train_step(ShardedMember(m.sae, m.optimizer, m.tracker), x, lr, grad_clip)

    def global_record(self, record: dict) -> dict:
        """Means over all ranks: loss terms and NMSE over the replicas; L0 × G the sum of a replica's shards; dead fraction over the shards."""
        if not self.world.parallel:
            return record
        keys = [k for k in record if k not in ("step", "tokens", "lr", "tokens_per_s")]
        with distributed.global_batch(self.world):
            values = dict(zip(keys, distributed.rank_mean([float(record[k]) for k in keys])))
        for k in ("l0", "l0_eps"):
            values[k] *= self.latent.size  # each shard counted its own latents
        return {**record, **values}

    # ---- checkpoints: one file per rank, named by rank 0's checkpoint -------------------------
    def save_checkpoint(self, out: Path, members: list[Member], step: int, write: Callable[..., None]) -> None:
        """One file per shard (the first replica's) under checkpoint.shards/<tag>/, then rank 0's file naming the tag."""
        world = self.world
        tag = world.on_main(lambda: f"step{step}-{secrets.token_hex(4)}")
        folder = out / SHARD_DIR / tag
        failure = None
        try:
            if self.data.rank == 0:  # the replicas hold the same shards: the first one writes them
                folder.mkdir(parents=True, exist_ok=True)
                save_checkpoint(
                    folder / shard_file(self.latent.rank, self.latent.size), self._shard_state(members[0], step)
                )
        except OSError as e:
            failure = f"{e.filename or folder}: {e.strerror or e}"
        if world.any_flag(
            failure is not None
        ):  # no rank goes on, and rank 0 names nothing, unless every shard is on disk
            raise DataError(failure or f"{folder}: another rank could not write its shard of the checkpoint")

        def commit() -> None:
            write(members, step, latent_shards={"ranks": self.latent.size, "tag": tag})
            for old in (out / SHARD_DIR).iterdir():
                if old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)

        world.on_main(commit)

    def member_tensors(self, m: Member) -> dict:
        """Nothing: rank 0's file holds the run; each rank's shard file holds its tensors."""
        return {}

    @staticmethod
    def _shard_state(m: Member, step: int) -> dict:
        shard: ShardedSAE = m.sae
        names = [name for name, _ in shard.named_parameters()]
        opt = m.optimizer.state_dict()
        adam = {names[i]: state for i, state in opt["state"].items()}
        return {
            "step": step,
            "lo": shard.lo,
            "hi": shard.hi,
            "model": shard.state_dict(),
            "adam": adam,
            "param_groups": opt["param_groups"],
            "tracker": m.tracker.state_dict(),
        }

    def load_member_tensors(self, out: Path, m: Member, saved: dict, state: dict) -> None:
        """This rank's latents re-sliced from the saved shards: any number of ranks that divides n resumes."""
        info = state.get("latent_shards")
        if not isinstance(info, dict):
            raise DataError(f"{out}: the checkpoint holds an unsharded run; resume it without --shard-latents")
        saved_ranks, folder = int(info["ranks"]), out / SHARD_DIR / str(info["tag"])
        if saved_ranks < 1 or m.cfg.n_latents % saved_ranks:
            raise DataError(
                f"{out / CHECKPOINT}: names {saved_ranks} latent shards, which do not split {m.cfg.n_latents} latents"
            )
        shard: ShardedSAE = m.sae
        per = m.cfg.n_latents // saved_ranks
        ranks = range(shard.lo // per, (shard.hi - 1) // per + 1)  # the saved shards that hold this rank's latents
        parts = []
        for r in ranks:
            part = load_checkpoint(folder / shard_file(r, saved_ranks))
            if (part.get("lo"), part.get("hi"), part.get("step")) != (r * per, (r + 1) * per, state["step"]):
                raise DataError(
                    f"{folder / shard_file(r, saved_ranks)}: holds latents [{part.get('lo')}, {part.get('hi')}) at step "
                    f"{part.get('step')}, not [{r * per}, {(r + 1) * per}) at step {state['step']}"
                )
            parts.append(part)
        first = ranks[0] * per

        def cut(key, name: str) -> torch.Tensor:
            return _latent_slice(parts, key, name, first, shard.lo, shard.hi)

        model = dict(parts[0]["model"])  # the replicated tensors: the same in every part
        for name in LATENT_DIM:
            model[name] = cut(lambda p, name=name: p["model"][name], name)
        shard.load_state_dict(model)
        names = [name for name, _ in shard.named_parameters()]
        adam = {}
        for i, name in enumerate(names):
            if name not in parts[0]["adam"]:
                continue  # never stepped (a step-0 checkpoint)
            entry = dict(parts[0]["adam"][name])
            if name in LATENT_DIM:
                for moment in ("exp_avg", "exp_avg_sq"):
                    entry[moment] = cut(lambda p, name=name, moment=moment: p["adam"][name][moment], name)
            adam[i] = entry
        m.optimizer.load_state_dict({"state": adam, "param_groups": parts[0]["param_groups"]})
        since = cut(lambda p: p["tracker"]["since_fired"], "since_fired")
        m.tracker.load_state_dict({**parts[0]["tracker"], "since_fired": since})

    # ---- the end: one normal folder, from rank 0 -----------------------------------------------
    def gather(self, members: list[Member]) -> list[Member]:
        """The first replica's shards send, its rank 0 (global rank 0) receives the whole SAE on the CPU."""
        full = gather_sae(members[0].sae) if self.data.rank == 0 else None
        return [dataclasses.replace(members[0], sae=full)] if full is not None else members

    def folder_extra(self) -> dict:
        """How the SAE was trained: its latent shards and data replicas."""
        return {"latent_shards": self.latent.size, "data_replicas": self.data.size}


class ShardedTrainer(Trainer):
    """The Trainer with the LatentSharded strategy: trains one SAE whose latents are split over the torchrun ranks."""

    def __init__(
        self,
        run: RunConfig,
        progress: bool = True,
        world: distributed.World | None = None,
        store: ActivationStore | None = None,
    ):
        super().__init__(run, progress=progress, world=world, store=store, strategy=LatentSharded)


__all__ = ["LatentSharded", "ShardedTrainer", "SHARD_DIR", "shard_file"]
