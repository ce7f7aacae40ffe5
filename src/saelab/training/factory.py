"""Which trainer a run asks for: latent-sharded (train.shard_latents) or the Trainer (one process or data-parallel).

Its own module because the sharded trainer builds on the Trainer: choosing between them from
train.py would make the two modules import each other.
"""

from __future__ import annotations

from saelab.config import RunConfig
from saelab.data.store import ActivationStore
from saelab.training.member import Member
from saelab.training.sharded.trainer import ShardedTrainer
from saelab.training.trainer import Trainer
from saelab.util import distributed


def make_trainer(
    run: RunConfig, progress: bool = True, world: distributed.World | None = None, store: ActivationStore | None = None
) -> Trainer:
    """The trainer `run` asks for: ShardedTrainer when train.shard_latents, else Trainer (on `store` when given)."""
    cls = ShardedTrainer if run.train.shard_latents else Trainer
    return cls(run, progress=progress, world=world, store=store)


def train(run: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> list[Member]:
    """Train every SAE of `run` with the trainer it asks for; the members, as the trainer returns them."""
    return make_trainer(run, progress=progress).fit(resume=resume, overwrite=overwrite)
