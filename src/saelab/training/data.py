"""Where a run's rows come from: the one seam between the training loop and its data.

The Trainer (training/trainer.py) asks its TrainingData for everything that depends on the data:

  stream                      the batches: stream.batch(step)[0] is step's global batch; order_hash()
  budget(train)               how many steps the run's budget (steps, tokens or epochs) is
  member_dirs(run, out)       each SAE's folder inside the run folder `out`
  build_members(...)          the members, initialized from this data (usually through the strategy)
  local_batch(x, strategy)    this rank's rows of a global batch (the strategy's slice)
  member_rows(m, x)           the rows of a batch member m steps on
  fingerprints()              what a checkpoint records to recognize this data on resume
  checkpoint_extra(step)      further keys the checkpoint holds as of `step`
  check_saved(state, out)     refuse a checkpoint from other data; restore(...) loads what it added
  eval_data(m), eval_range    the held-out rows that evaluate member m (and until_converged checks)
  split_record(m)             saelab.json's `split`; folder_extra(m) and `source` its other data keys

CachedData is the default: an activation cache (or an in-memory array) read in shuffled batches.
sources/lm/online_trainer.py's OnlineData streams rows from a running language model instead.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from saelab.config import RunConfig, TrainConfig
from saelab.data.source_info import read_source_info
from saelab.data.store import ActivationStore, split_rows
from saelab.data.stream import BatchStream
from saelab.errors import ConfigError, DataError
from saelab.methods.resolve import display_name
from saelab.training.fingerprint import data_fingerprint
from saelab.training.member import Member
from saelab.training.strategy import Strategy
from saelab.util import distributed

INIT_SAMPLE_ROWS = 16384


class TrainingData:
    """The seam: what the Trainer asks of its data (see the module docstring).

    A subclass is built as `factory(run, world)` (the Trainer's `data` argument), after the strategy,
    and refuses there what it cannot feed. It sets `stream`, `eval_range` and `source`.
    """

    stream = None  # .batch(step) -> (global batch, labels or None); .order_hash() -> str
    eval_range: tuple[int, int] = (0, 0)  # the held-out rows until_converged checks
    source: dict | None = None  # saelab.json's `source` (None: folder_extra gives it, or there is none)

    def budget(self, train: TrainConfig) -> int:
        """The run's length in steps: train.steps, or train.tokens in whole batches."""
        if train.steps is not None:
            return train.steps
        if train.tokens is not None:
            return math.ceil(train.tokens / train.batch_size)
        raise NotImplementedError

    def member_dirs(self, run: RunConfig, out: Path) -> list[Path]:
        """Each SAE's folder: the run folder for one SAE, a subfolder named after each SAE for several."""
        if len(run.saes) == 1:
            return [out]
        return [out / display_name(cfg) for cfg in run.saes]

    def build_members(self, run: RunConfig, strategy: Strategy, dirs: list[Path], resuming: bool) -> list[Member]:
        """The members this rank trains, writing to `dirs` (`resuming`: their state then comes from a checkpoint)."""
        raise NotImplementedError

    def local_batch(self, x: torch.Tensor, strategy: Strategy) -> torch.Tensor:
        """This rank's rows of the global batch `x`: the strategy's slice."""
        return strategy.local_batch(x)

    def member_rows(self, m: Member, x: torch.Tensor) -> torch.Tensor:
        """The rows of this rank's batch `x` that member m steps on: all of them."""
        return x

    def fingerprints(self) -> dict:
        """The checkpoint's `data`: field -> fingerprint, checked on resume against the same fields now."""
        return {}

    def checkpoint_extra(self, step: int) -> dict:
        """Further keys the checkpoint of `step` holds (restore reads them back)."""
        return {}

    def check_saved(self, state: dict, out: Path) -> None:
        """ConfigError unless the checkpoint `state` (in run folder `out`) was trained on this data."""

    def restore(self, state: dict, step: int, out: Path) -> None:
        """Load what checkpoint_extra saved, after the members were restored to `step`."""

    def eval_data(self, m: Member) -> tuple[ActivationStore, tuple[int, int]]:
        """The store and row range member m is evaluated on (held-out rows)."""
        raise NotImplementedError

    def split_record(self, m: Member) -> dict:
        """saelab.json's `split`: which rows trained member m and which evaluated it."""
        raise NotImplementedError

    def folder_extra(self, m: Member) -> dict:
        """Keys this data adds to (or replaces in) member m's saelab.json."""
        return {}


class CachedData(TrainingData):
    """An activation cache on disk (run.train.activations), or in-memory rows, read in shuffled batches.

    The held-out rows are eval_activations when given, else the last eval_fraction of the rows.
    """

    def __init__(self, run: RunConfig, store: ActivationStore | None = None):
        # `store`: in-memory rows (saelab.train on an array); run.train.activations then only labels them.
        t = self.train = run.train
        self.store = store if store is not None else ActivationStore(t.activations)
        if t.scan:
            self.store.scan_finite()
        if t.eval_activations:
            self.eval_store = ActivationStore(t.eval_activations)
            if self.eval_store.d_in != self.store.d_in:
                raise DataError(
                    f"eval_activations={t.eval_activations!r}: d_in {self.eval_store.d_in} differs from the training data's {self.store.d_in}"
                )
            if t.scan:
                self.eval_store.scan_finite()
            self.split = split_rows(self.store.n_rows, 0.0)
            self.eval_range = (0, self.eval_store.n_rows)
        else:
            self.eval_store = self.store
            self.split = split_rows(self.store.n_rows, t.eval_fraction)
            self.eval_range = self.split.eval
        buffer_rows = t.shuffle_buffer_mb * 2**20 // (4 * self.store.d_in)
        self.stream = BatchStream(self.store, self.split.train, t.batch_size, t.seed, buffer_rows)
        self.source = None if store is not None else read_source_info(t.activations)
        self._fp: dict | None = None  # the data's fingerprints, hashed once when a checkpoint or resume needs them

    @classmethod
    def given(cls, store: ActivationStore | None) -> Callable[[RunConfig, distributed.World], CachedData]:
        """The factory the Trainer builds it with, on `store` when given."""
        return lambda run, world: cls(run, store)

    def budget(self, train: TrainConfig) -> int:
        """steps, tokens, or epochs (default one) passes over the training rows."""
        if train.steps is not None or train.tokens is not None:
            return super().budget(train)
        epochs = train.epochs if train.epochs is not None else 1.0
        steps = epochs * self.stream.steps_per_epoch
        if not math.isfinite(steps):
            raise ConfigError("epochs", epochs, "asks for more steps than can be counted")
        return max(1, math.ceil(steps))

    def init_sample(self) -> torch.Tensor:
        """Up to INIT_SAMPLE_ROWS training rows, drawn by the run's seed, that initialize the SAEs."""
        lo, hi = self.split.train
        rng = np.random.default_rng([self.train.seed, 7])
        rows = rng.choice(np.arange(lo, hi), size=min(INIT_SAMPLE_ROWS, hi - lo), replace=False)
        return torch.from_numpy(self.store.read(rows))

    def build_members(self, run: RunConfig, strategy: Strategy, dirs: list[Path], resuming: bool) -> list[Member]:
        """The strategy's members, initialized from a sample of the training rows."""
        return strategy.build_members(run, self.store.d_in, self.init_sample, dirs)

    def fingerprints(self) -> dict:
        """The activation file's fingerprint (and the eval file's, when given)."""
        if self._fp is None:
            fp = {"activations": data_fingerprint(self.store)}
            if self.train.eval_activations:
                fp["eval_activations"] = data_fingerprint(self.eval_store)
            self._fp = fp
        return self._fp

    def eval_data(self, m: Member) -> tuple[ActivationStore, tuple[int, int]]:
        """The held-out rows (eval_activations, or the end of the training file)."""
        return self.eval_store, self.eval_range

    def split_record(self, m: Member) -> dict:
        """The training and held-out row ranges, and the eval file."""
        return {
            "train_rows": list(self.split.train),
            "eval_rows": list(self.eval_range),
            "eval_file": self.train.eval_activations,
        }
