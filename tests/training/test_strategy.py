"""The Trainer's one seam (training.strategy): a Strategy sees every step, checkpoint and the gather; sharding is one."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.training.factory import make_trainer
from saelab.training.sharded.trainer import LatentSharded, ShardedTrainer
from saelab.training.strategy import DataParallel
from saelab.training.trainer import Trainer


def _run(toy_dir: Path, out: Path, **train) -> RunConfig:
    t = TrainConfig(
        activations=str(toy_dir / "activations.npy"), out=str(out), steps=4, batch_size=32, checkpoint_every=2, **train
    )
    return RunConfig(t, [SAEConfig(n_latents=32, method="topk", method_params={"k": 4})])


class Recording(DataParallel):
    """The default strategy, noting each call the Trainer makes of it."""

    calls: list = []

    def step(self, m, x, step, lr, grad_clip):
        self.calls.append(("step", step, x.shape[0]))
        return super().step(m, x, step, lr, grad_clip)

    def save_checkpoint(self, out, members, step, write):
        self.calls.append(("checkpoint", step))
        super().save_checkpoint(out, members, step, write)

    def gather(self, members):
        self.calls.append(("gather", len(members)))
        return super().gather(members)


def test_a_strategy_sees_every_step_and_checkpoint_and_trains_the_default_weights(toy_dir, tmp_path):
    Recording.calls = []
    Trainer(_run(toy_dir, tmp_path / "recorded"), progress=False, strategy=Recording).fit()
    Trainer(_run(toy_dir, tmp_path / "plain"), progress=False).fit()
    assert Recording.calls == [
        ("step", 0, 32),
        ("step", 1, 32),
        ("checkpoint", 2),
        ("step", 2, 32),
        ("step", 3, 32),
        ("checkpoint", 4),
        ("gather", 1),
    ]
    recorded = load_file(str(tmp_path / "recorded" / "sae_weights.safetensors"))
    plain = load_file(str(tmp_path / "plain" / "sae_weights.safetensors"))
    assert recorded.keys() == plain.keys() and all(torch.equal(recorded[k], plain[k]) for k in plain)


def test_the_sharded_run_is_the_trainer_given_the_sharded_strategy(toy_dir, tmp_path):
    run = _run(toy_dir, tmp_path / "sharded", shard_latents=True)
    trainer = make_trainer(run, progress=False)
    assert type(trainer) is Trainer and isinstance(trainer.strategy, LatentSharded)
    # ShardedTrainer names that Trainer: it defines its constructor and nothing else.
    assert [name for name, value in vars(ShardedTrainer).items() if callable(value)] == ["__init__"]
    assert isinstance(make_trainer(_run(toy_dir, tmp_path / "plain"), progress=False).strategy, DataParallel)
