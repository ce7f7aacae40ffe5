"""How a run's work is split over its ranks: the one seam between the training loop and a layout of the SAEs.

The Trainer (training/trainer.py) runs the loop — stream, schedule, logs, signals, checkpoints,
resume, final evaluation — and asks its Strategy for everything that depends on where the SAEs
and the rows live:

  local_batch(x)              this rank's rows of a global batch
  build_members(...)          the members this rank trains (whole SAEs, or one SAE's latent shard)
  step(m, x, step, lr, clip)  one optimizer step of a member on this rank's rows
  global_record(record)       a logged record as the whole run's (means or sums over ranks)
  save_checkpoint(...)        which ranks write what; `write` is the Trainer's checkpoint file
  member_tensors(m)           a member's trained state in that file; load_member_tensors reads it back
  gather(members)             the members as the final evaluation sees them (whole SAEs)
  folder_extra()              keys the layout adds to each SAE's saelab.json

DataParallel is the default: every rank holds every SAE and steps on an equal slice of each batch.
training/sharded/trainer.py's LatentSharded splits one SAE's latents over the ranks.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable

import torch

from saelab.config import RunConfig
from saelab.errors import ConfigError, DataError
from saelab.methods.resolve import display_name
from saelab.step_output import StepOutput
from saelab.training.member import Member, build_member, check_representable, train_step
from saelab.util import distributed


class Strategy:
    """The seam: what the Trainer asks of a layout of SAEs over ranks (see the module docstring).

    A subclass is built as `cls(run, world)` and refuses there what it cannot do with these ranks.
    """

    def __init__(self, run: RunConfig, world: distributed.World):
        self.world = world

    def local_batch(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's rows of the global batch `x`."""
        raise NotImplementedError

    def build_members(
        self, run: RunConfig, d_in: int, sample: Callable[[], torch.Tensor], dirs: list[Path]
    ) -> list[Member]:
        """The members this rank trains: run.saes with d_in set, initialized from `sample()`, writing to `dirs`."""
        raise NotImplementedError

    def step(self, m: Member, x: torch.Tensor, step: int, lr: float, grad_clip: float | None) -> StepOutput:
        """One optimizer step of `m` on this rank's rows `x` (step number `step`, learning rate `lr`)."""
        raise NotImplementedError

    def global_record(self, record: dict) -> dict:
        """A logged record of this rank as the whole run's."""
        return record

    def save_checkpoint(self, out: Path, members: list[Member], step: int, write: Callable[..., None]) -> None:
        """Checkpoint the run at `step`; `write(members, step, **extra)` writes the run's checkpoint file (rank 0)."""
        raise NotImplementedError

    def member_tensors(self, m: Member) -> dict:
        """What the checkpoint file holds of member m's trained state."""
        return {"model": m.sae.state_dict(), "optimizer": m.optimizer.state_dict(), "tracker": m.tracker.state_dict()}

    def load_member_tensors(self, out: Path, m: Member, saved: dict, state: dict) -> None:
        """Load what member_tensors saved (`saved`: its entry; `state`: the whole checkpoint, in folder `out`)."""
        m.sae.load_state_dict(saved["model"])
        m.optimizer.load_state_dict(saved["optimizer"])
        m.tracker.load_state_dict(saved["tracker"])

    def gather(self, members: list[Member]) -> list[Member]:
        """The members as the final evaluation and the caller see them."""
        return members

    def folder_extra(self) -> dict:
        """Keys this layout adds to each SAE's saelab.json."""
        return {}


class DataParallel(Strategy):
    """Every rank holds every SAE and steps on an equal slice of each batch's rows (one process: all of them)."""

    def __init__(self, run: RunConfig, world: distributed.World):
        super().__init__(run, world)
        if run.train.shard_latents:
            raise ConfigError(
                "shard_latents",
                True,
                "needs the latent-sharded trainer (saelab train, saelab.training.factory.make_trainer), "
                "which trains one SAE; sweeps do not shard latents",
            )
        world.check_batch(run.train.batch_size)
        if run.train.lean_memory and world.parallel:
            # Its hooks step each parameter mid-backward, before any all-reduce of the gradients could run.
            raise ConfigError(
                "lean_memory",
                True,
                f"trains in one process; this run has {world.size} ranks (drop --lean-memory, "
                "or shard the latents: --shard-latents)",
            )

    def local_batch(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's slice of the rows."""
        return self.world.shard(x)

    def build_members(
        self, run: RunConfig, d_in: int, sample: Callable[[], torch.Tensor], dirs: list[Path]
    ) -> list[Member]:
        """One member per SAE of the run, seeded by its name."""
        t = run.train
        x = sample()
        check_representable(x, t.activations)
        members = []
        for cfg, out in zip(run.saes, dirs):
            if cfg.d_in is not None and cfg.d_in != d_in:
                raise DataError(f"d_in={cfg.d_in} in the config, but {t.activations} has d_in={d_in}")
            cfg.d_in = d_in
            # Seeded by name, not position, so an SAE trained inside a sweep equals one trained alone.
            init_seed = zlib.crc32(f"{t.seed}:{display_name(cfg)}".encode())
            members.append(build_member(cfg, t, x, init_seed, out))
        return members

    def step(self, m: Member, x: torch.Tensor, step: int, lr: float, grad_clip: float | None) -> StepOutput:
        """train_step with the collectives seeing the whole batch; target_l0's controller moves after it."""
        with distributed.global_batch(self.world):  # x is this rank's slice; collectives see the whole batch
            out = train_step(m, x, lr, grad_clip)
            if m.control is not None:
                m.control.update(m.sae, out.z, step, out.losses)
        return out

    def global_record(self, record: dict) -> dict:
        """The loss terms, NMSE and L0 as means over ranks (each measured its slice).

        Loss terms and L0 are then the global batch's; NMSE is the mean of the per-rank NMSEs.
        """
        if not self.world.parallel:
            return record
        keys = [k for k in record if k not in ("step", "tokens", "dead_fraction", "lr", "tokens_per_s")]
        with distributed.global_batch(self.world):
            values = distributed.rank_mean([float(record[k]) for k in keys])
        return {**record, **dict(zip(keys, values))}

    def save_checkpoint(self, out: Path, members: list[Member], step: int, write: Callable[..., None]) -> None:
        """Every rank holds the same (global) state: rank 0 writes it, and no rank goes on before it is on disk."""
        if self.world.is_main:
            write(members, step)
        self.world.barrier()
