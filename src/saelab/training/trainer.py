"""The trainer: one loop over a stream of batches, any number of SAEs, checkpoints that resume exactly.

It knows the objective's interface (`compute_step`) and the SAE's, never a sparsity method's name.
Two seams plug in the variants: its Strategy (training.strategy: how SAEs and rows are split over
ranks) and its TrainingData (training.data: where the rows come from: a cache by default, a live LM
for `saelab lm train`).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from saelab import devices
from saelab.config import RunConfig
from saelab.data.prefetch import DEPTH as PREFETCH_DEPTH
from saelab.data.prefetch import Prefetcher
from saelab.data.store import ActivationStore
from saelab.errors import ConfigError, DataError, SaelabError
from saelab.formats.folder import SAELAB_CFG
from saelab.methods.resolve import display_name, resolve_run
from saelab.training.checkpoint import (
    LEGACY_CHECKPOINT,
    SHARD_CHECKPOINT_DIR,
    refuse_legacy,
)
from saelab.training.convergence import ConvergenceMonitor
from saelab.training.data import INIT_SAMPLE_ROWS, CachedData, TrainingData
from saelab.training.final import FinishedRun
from saelab.training.interrupt import StopSignals, TrainingInterrupted, signal_name
from saelab.training.l0_control import L0Controller
from saelab.training.member import (
    Member,
    Throughput,
    build_member,
    log_record,
)
from saelab.training.resume import CHECKPOINT, CheckpointedRun
from saelab.training.run_folder import (
    append_no_follow,
    check_folders,
    check_no_links,
    clean_temp_files,
    commit_staged,
    drop_staging,
    existing_run,
    recover_swap,
    staging_dir,
)
from saelab.training.run_lock import RunLocks
from saelab.training.schedule import lr_factor
from saelab.training.strategy import DataParallel, Strategy
from saelab.util import distributed
from saelab.util.atomic import atomic_write_json, dumps_json
from saelab.util.loggers import LogTarget, RunLoggers
from saelab.util.progress import Progress

RUN_CONFIG = "run.json"
METRICS = "metrics.jsonl"
# Everything a run writes into its folders: any of them present means a run is there.
RUN_FILES = (
    CHECKPOINT,
    LEGACY_CHECKPOINT,
    METRICS,
    RUN_CONFIG,
    SAELAB_CFG,
    "cfg.json",
    "sae_weights.safetensors",
    "eval.json",
)


class Trainer(CheckpointedRun, FinishedRun):
    """Trains every SAE of a RunConfig on the same batches."""

    def __init__(
        self,
        run: RunConfig,
        progress: bool = True,
        world: distributed.World | None = None,
        store: ActivationStore | None = None,
        strategy: Callable[[RunConfig, distributed.World], Strategy] | None = None,
        data: Callable[[RunConfig, distributed.World], TrainingData] | None = None,
    ):
        # `strategy`: how the SAEs and rows are split over the ranks (training.strategy); DataParallel unless given.
        # `data`: where the rows come from (training.data); CachedData on run.train.activations unless given.
        # `store`: in-memory rows for that CachedData (saelab.train on an array); run.train.activations then only labels them.
        self.run = run = resolve_run(run)  # method fields checked and target_l0's k set before anything trains
        # The processes that train this run together: every torchrun rank unless told (a spread sweep passes one).
        self.world = world if world is not None else distributed.init_from_env()
        self.strategy = (strategy or DataParallel)(run, self.world)  # refuses what it cannot do with these ranks
        # A bar on a terminal; piped (nohup, SLURM), a plain line every 30 s or 5 % (util.progress), rank 0 only.
        self.progress = progress and self.world.is_main
        self.data = (data or CachedData.given(store))(run, self.world)  # refuses what it cannot feed
        self.stream = self.data.stream  # the batches (a test may wrap it)
        self.prefetch_depth = PREFETCH_DEPTH  # batches read ahead of the steps; 0 reads each one when its step starts
        self.throughput: Throughput | None = None  # set by fit when it ran at least one step
        self.total_steps = self.data.budget(run.train)
        self.out = Path(run.train.out)
        self._resuming = False  # set by fit: the members' state then comes from the checkpoint
        self._converge_cache: dict[int, torch.Tensor] = {}  # until_converged's held-out rows per store, read once

    # ---- setup ------------------------------------------------------------------------------
    def _member_dirs(self) -> list[Path]:
        return self.data.member_dirs(self.run, self.out)

    def _build_members(self) -> list[Member]:
        return self.data.build_members(self.run, self.strategy, self._member_dirs(), self._resuming)

    def _run_dirs(self) -> list[Path]:
        return list(dict.fromkeys([self.out, *self._member_dirs()]))

    def _check_out(self, resume: bool, overwrite: bool) -> None:
        """Refuse to clobber a run (every member folder is checked before anything trains); clean temp leftovers."""
        dirs = self._run_dirs()
        check_folders(dirs)
        if recover_swap(self.out):  # an --overwrite swap cut short: finished, so the folder holds one whole run
            print(f"saelab: finished replacing the run in {self.out} (its swap was cut short)", file=sys.stderr)
        clean_temp_files(dirs)  # left by an atomic write that was interrupted
        ckpt = self.out / CHECKPOINT
        self._replacing = False
        if resume:
            refuse_legacy(self.out)
            if not ckpt.exists():
                raise ConfigError("resume", str(self.out), f"no {CHECKPOINT} in the output folder to resume from")
            return
        found = existing_run(dirs, RUN_FILES, CHECKPOINT)
        if found and not overwrite:
            hint = (
                "pass --resume to continue it or --overwrite to replace it"
                if ckpt.exists()
                else "pass --overwrite to replace it"
            )
            raise ConfigError("out", str(self.out), f"already holds {found}; {hint}")
        self._replacing = found is not None

    # ---- the loop ---------------------------------------------------------------------------
    def _train_step(self, m: Member, x: torch.Tensor, step: int) -> dict:
        t = self.run.train
        lr = m.base_lr * lr_factor(step, self.total_steps, t.warmup_steps, t.decay, t.decay_fraction)
        return {"out": self.strategy.step(m, x, step, lr, t.grad_clip), "lr": lr}

    def fit(self, resume: bool = False, overwrite: bool = False) -> list[Member]:
        """Train to the budget, writing logs, checkpoints and each SAE folder; return the members.

        The output folder and each SAE folder are locked for the run (run_lock). With `overwrite` the
        new run is built in a staging folder inside the old one and swapped in only once complete, so a
        run that fails, diverges or is killed leaves the old run as it was. SIGINT/SIGTERM end the loop
        after the current step with a checkpoint and raise TrainingInterrupted; a failed write is a
        DataError naming its path.
        """
        self._final_out = None  # the run folder while an --overwrite run is built in its staging folder
        self._resuming = resume
        dirs = self._run_dirs()
        if self.world.is_main:  # only rank 0 writes the folders
            check_no_links(self.out, dirs, RUN_FILES)
        lock = RunLocks(dirs) if self.world.is_main else contextlib.nullcontext()
        with lock, StopSignals() as self._stop:
            try:
                return self._fit(resume, overwrite)
            except BaseException as e:
                staged = self._final_out is not None
                if staged:
                    self.out, self._final_out = self._final_out, None
                    if self.world.is_main:
                        drop_staging(self.out)
                if isinstance(e, TrainingInterrupted):
                    if getattr(e, "checkpointed", False) and not staged:
                        raise
                    said = f"interrupted by {signal_name(e.signum)}" if staged else str(e)
                    raise TrainingInterrupted(e.signum, f"{said}; {self._resume_hint(staged)}") from None
                if isinstance(e, OSError):
                    raise DataError(
                        f"{e.filename or self.out}: {e.strerror or e}; {self._resume_hint(staged)}"
                    ) from None
                if staged and isinstance(e, SaelabError):
                    raise DataError(f"{e}; {self._resume_hint(staged)}") from None
                raise

    def _resume_hint(self, staged: bool = False) -> str:
        if staged:
            return f"nothing was replaced: the old run in {self.out} is as it was"
        if (self.out / CHECKPOINT).exists():
            return f"the last checkpoint in {self.out} is intact: run the same command with --resume to continue"
        return "no checkpoint was written: run the command again (with --overwrite if it reports a partial run)"

    def _interrupted(self, signum: int, step: int) -> TrainingInterrupted:
        e = TrainingInterrupted(
            signum,
            f"interrupted by {signal_name(signum)} at step {step}; checkpoint saved in {self.out}; "
            "run the same command with --resume to continue",
        )
        e.checkpointed = True
        return e

    def _fit(self, resume: bool, overwrite: bool) -> list[Member]:
        t = self.run.train
        # Rank 0 checks and cleans the folder; every rank learns the outcome, or stops with its error.
        self._replacing = self.world.on_main(lambda: self._check_out(resume, overwrite) or self._replacing)
        if self._replacing:  # build the new run beside the old one; the old one stays whole until the swap
            self._final_out = self.out
            self.out = self.world.on_main(lambda: staging_dir(self._final_out))
        torch.manual_seed(t.seed)
        members = self._build_members()
        for m in members:
            m.control = L0Controller.for_member(m.sae, self.total_steps, t.eps_l0)
            m.convergence = ConvergenceMonitor.for_run(t, self.data.eval_range)
        start = 0
        if resume:
            start = self._load_checkpoint(members)
            for m in members if self.world.is_main else []:
                self._truncate_log(m.out / METRICS, start)
        if self.world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / RUN_CONFIG, self.run.to_dict())
        logs = []
        for m in members:
            if self.world.is_main:
                m.out.mkdir(parents=True, exist_ok=True)
            # Other ranks compute the same (global) records, and stop on the same non-finite loss, but write nowhere.
            logs.append(append_no_follow(m.out / METRICS) if self.world.is_main else open(os.devnull, "a"))
        loggers = self._open_loggers(members)
        bar = Progress("train", self.total_steps, "step", enabled=self.progress, initial=start)
        stop = self._all_converged(members)  # a resumed run that had converged trains no further
        end = start if stop else self.total_steps
        # The thread reads, shuffles and slices the batches ahead; they are the ones stream.batch(step) gives.
        batches = Prefetcher(lambda p: self.stream.batch(p)[0], start, end, self.prefetch_depth)
        tick, tick_step = time.perf_counter(), start
        loop_start, step_s, wait_s, done = tick, 0.0, 0.0, start
        self._stop.armed = True  # from here a signal ends the loop after the current step, with a checkpoint
        try:
            for step in range(start, end):
                before = time.perf_counter()
                x = self.data.local_batch(torch.from_numpy(batches.get(step)), self.strategy).to(t.device)
                began = time.perf_counter()
                results = [self._train_step(m, self.data.member_rows(m, x), step) for m in members]
                devices.synchronize(t.device)  # queued device work belongs to the step it was queued by
                finished = time.perf_counter()
                wait_s += began - before
                step_s += finished - began
                done = step + 1
                stop = self._check_convergence(members, done)  # before any checkpoint of this step, which then holds it
                if done % t.log_every == 0 or done == self.total_steps or stop:
                    now = time.perf_counter()
                    rate = (done - tick_step) * t.batch_size / max(now - tick, 1e-9)
                    tick, tick_step = now, done
                    records = [
                        log_record(done, done * t.batch_size, r, m, rate, t.eps_l0) for m, r in zip(members, results)
                    ]
                    records = [self.strategy.global_record(rec) for rec in records]
                    for m, rec, log in zip(members, records, logs):
                        if not math.isfinite(rec["loss"]):
                            raise DataError(
                                f"{display_name(m.cfg)}: loss became {rec['loss']} at step {done}; lower the learning rate or check the data"
                            )
                        log.write(dumps_json(rec) + "\n")
                        log.flush()
                        loggers.log(m.out, rec)
                    bar.postfix(
                        loss=f"{records[0]['loss']:.4g}",
                        nmse=f"{records[0]['nmse']:.3f}",
                        l0=f"{records[0]['l0']:.1f}",
                        tokens_per_s=f"{rate:.0f}",
                    )
                if t.checkpoint_every and done % t.checkpoint_every == 0 and done < self.total_steps and not stop:
                    self._save_checkpoint(members, done)
                bar.update(1)
                if self.world.any_flag(
                    self._stop.signum is not None
                ):  # a signal to any rank stops all at the same step
                    self._save_checkpoint(members, done)
                    raise self._interrupted(self._stop.signum or signal.SIGTERM, done)
                if stop:
                    break
            if done > start:
                self.throughput = Throughput(
                    (done - start) * t.batch_size, time.perf_counter() - loop_start, step_s, wait_s
                )
        finally:
            self._stop.armed = False
            batches.close()  # on every way out: the thread never outlives the loop
            bar.close()
            loggers.close()
            for log in logs:
                log.close()
        if stop:  # the run is what was trained: its checkpoint, saelab.json and a resume all end here
            self.total_steps = max(m.convergence.converged_at for m in members) // t.batch_size
        self._save_checkpoint(members, self.total_steps)
        members = self._complete(members)
        if self._final_out is not None:
            self._swap_in(members)
        return members

    def _swap_in(self, members: list[Member]) -> None:
        """--overwrite: the complete new run (in the staging folder) replaces the old one; the members point at their final folders."""
        final, staged = self._final_out, self.out
        # Each SAE's folder as the data lays it out (<name>, or <hook>/<name> for a live LM's site).
        names = [d.relative_to(staged).as_posix() for d in self._member_dirs()] if len(self.run.saes) > 1 else []
        # From here the new run is complete: a swap cut short is finished by the next run into the folder, never undone.
        self.out, self._final_out = final, None
        self.world.on_main(lambda: commit_staged(final, names, RUN_FILES, [SHARD_CHECKPOINT_DIR]))
        for m in members:
            m.out = final / m.out.relative_to(staged)

    def _complete(self, members: list[Member]) -> list[Member]:
        """Evaluate and write each SAE's folder (rank 0); the members, as the caller sees them."""
        whole = self.strategy.gather(members)
        self.world.on_main(lambda: self._finish(whole))
        return whole

    def _open_loggers(self, members: list[Member]) -> RunLoggers:
        """--log: one experiment-logger run per SAE, grouped by the run folder, its config logged once (rank 0 only)."""
        t = self.run.train
        if t.log is None or not self.world.is_main:
            return RunLoggers()
        targets = [
            (
                LogTarget(display_name(m.cfg), self.out.resolve().name, m.out),
                {"train": t.to_dict(), "sae": m.cfg.to_dict()},
            )
            for m in members
        ]
        return RunLoggers.open(t.log, targets)


def train(run: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> list[Member]:
    """Train every SAE of `run`; see Trainer (saelab.training.factory.train also takes latent-sharded runs)."""
    return Trainer(run, progress=progress).fit(resume=resume, overwrite=overwrite)


__all__ = ["Trainer", "train", "build_member", "RUN_CONFIG", "METRICS", "RUN_FILES", "INIT_SAMPLE_ROWS", "CHECKPOINT"]
