"""Which strategy a run asks for: latent-sharded (train.shard_latents) or data-parallel (one process or several).

Its own module because the sharded strategy's module builds on the Trainer's (its CHECKPOINT name
and the ShardedTrainer shorthand): choosing from trainer.py would make the two import each other.
"""

from __future__ import annotations

from saelab.config import RunConfig
from saelab.data.store import ActivationStore
from saelab.training.member import Member
from saelab.training.sharded.trainer import LatentSharded
from saelab.training.trainer import Trainer
from saelab.util import distributed


def make_trainer(
    run: RunConfig, progress: bool = True, world: distributed.World | None = None, store: ActivationStore | None = None
) -> Trainer:
    """The Trainer, with the LatentSharded strategy when train.shard_latents (on `store` when given)."""
    strategy = LatentSharded if run.train.shard_latents else None
    return Trainer(run, progress=progress, world=world, store=store, strategy=strategy)


def train(run: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> list[Member]:
    """Train every SAE of `run` with the strategy it asks for; the members, as the trainer returns them."""
    return make_trainer(run, progress=progress).fit(resume=resume, overwrite=overwrite)
