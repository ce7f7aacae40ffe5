"""`saelab lm train`: the Trainer fed by a live LM (sources/online.py) instead of an activation cache.

Only the data side changes: the training step, members, logs, checkpoints, convergence and
folders are the Trainer's own. Each batch is [sites, batch_size, d_model]; each SAE steps on
its site's rows. The checkpoint adds the stream's state (text cursor, buffers, RNG), so a resume
continues with exactly the batches an uninterrupted run would have used.
"""

from __future__ import annotations

import copy
import os
import zlib
from pathlib import Path

import torch

from saelab.config import RunConfig, SAEConfig
from saelab.data.store import ActivationStore
from saelab.errors import ConfigError
from saelab.methods.resolve import display_name, resolve_run
from saelab.sources.base import with_site
from saelab.sources.lm.model import LanguageModel, LMSpec, load_lm
from saelab.sources.lm.site import lm_site
from saelab.sources.lm.stream import OnlineConfig, OnlineStream, buffer_bytes, hook_name
from saelab.sources.lm.text import first_token_id, iter_chunks
from saelab.training.member import Member, build_member
from saelab.training.strategy import DataParallel
from saelab.training.trainer import INIT_SAMPLE_ROWS, Trainer
from saelab.util import distributed


def expand_saes(
    saes: list[SAEConfig], tables_sites: list[tuple[int, str] | None], sites: tuple[tuple[int, str], ...]
) -> tuple[list[SAEConfig], list[int]]:
    """One SAE config per (table, site): a table naming a site trains there, one naming none on every site.

    Each copy is named after its hook (blocks.6.hook_resid_post), followed by the table's own name
    when a site trains several SAEs; returns the configs and each one's index into `sites`.
    """
    pairs = []
    for cfg, site in zip(saes, tables_sites):
        for i, s in enumerate(sites):
            if site is None or site == s:
                pairs.append((cfg, i))
    per_site = {i: sum(1 for _, j in pairs if j == i) for i in range(len(sites))}
    empty = [hook_name(sites[i]) for i, n in per_site.items() if n == 0]
    if empty:
        raise ConfigError("sites", empty[0], "no SAE trains on this site (every [[sae]] table names another)")
    out, index = [], []
    for cfg, i in pairs:
        c = copy.deepcopy(cfg)
        c.name = hook_name(sites[i]) if per_site[i] == 1 else f"{hook_name(sites[i])}.{display_name(cfg)}"
        out.append(c)
        index.append(i)
    return out, index


class OnlineTrainer(Trainer):
    """Trains the SAEs of every site on one pass of a live LM over streamed text."""

    # Batches produced ahead in a thread (`overlap`): the LM forward of a refill then runs beside the SAE steps,
    # with its own torch threads. bench/online.py measured it faster only on a machine crowded by other jobs
    # (more threads, more share), so it is opt-in. Checkpoints are exact either way.
    PREFETCH_DEPTH = 0
    OVERLAP_DEPTH = 1

    def __init__(
        self,
        run: RunConfig,
        online: OnlineConfig,
        site_index: list[int],
        progress: bool = True,
        world: distributed.World | None = None,
        log=None,
        lm: LanguageModel | None = None,
        overlap: bool = False,
    ):
        self.run = run = resolve_run(run)
        self.online = online.validate()
        if len(site_index) != len(run.saes):
            raise ConfigError("sae", len(run.saes), f"{len(site_index)} site indices given")
        self.site_index = list(site_index)
        self.world = world if world is not None else distributed.init_from_env()
        self.strategy = DataParallel(run, self.world)  # refuses what data-parallel ranks cannot do
        self.progress = progress and self.world.is_main
        t = run.train
        if t.steps is None and t.tokens is None:
            raise ConfigError("tokens", None, "required: how many training tokens (or --steps)")
        if t.epochs is not None:
            raise ConfigError("epochs", t.epochs, "a text stream has no epochs; give --tokens")
        next(
            iter_chunks(online.text_config()), None
        )  # a missing file or unreachable dataset fails before the slow model load
        if overlap and self.world.parallel:
            # The prefetch thread's all-gathers would interleave with the steps' all-reduces, in a different order on each rank.
            raise ConfigError(
                "overlap", True, f"runs in one process; this run has {self.world.size} ranks (drop --overlap)"
            )
        device = t.device
        if self.world.parallel and device == "cuda":  # one GPU per rank
            device = f"cuda:{os.environ.get('LOCAL_RANK', self.world.rank)}"
        # `lm`: a model already loaded from online.model (a notebook or bench loads it once)
        self.lm = lm if lm is not None else load_lm(LMSpec(online.model, device, online.model_dtype))
        self.stream = OnlineStream(self.lm, online, t.batch_size, t.seed, self.world, total_batches=self._budget())
        if log is not None and self.world.is_main:
            mib = (
                buffer_bytes(
                    self.stream.buffer_tokens,
                    len(online.sites),
                    self.lm.d_model,
                    online.windows_per_forward,
                    online.context,
                )
                / 2**20
            )
            log(
                f"{len(online.sites)} sites × {self.stream.buffer_tokens} buffered rows × d_model {self.lm.d_model}: {mib:.0f} MiB of buffers"
            )
        # Held-out rows of each site (the first windows of the text), for the final evaluation and until_converged.
        self.eval_stores = [
            ActivationStore.from_array(rows, name=f"<held-out {hook_name(s)}>")
            for rows, s in zip(self.stream.held_out(), online.sites)
        ]
        self.eval_range = (0, min(store.n_rows for store in self.eval_stores))  # what until_converged checks is there
        self.prefetch_depth = self.OVERLAP_DEPTH if overlap else self.PREFETCH_DEPTH
        self.throughput = None
        self.total_steps = self._budget()
        self.out = Path(t.out)
        self.source = None
        self._data_fp = None  # unused: _fingerprints describes the text stream instead
        self._converge_cache = {}
        self._resuming = False

    # ---- data -----------------------------------------------------------------------------
    def _budget(self) -> int:
        t = self.run.train
        return t.steps if t.steps is not None else -(-t.tokens // t.batch_size)

    def _member_dirs(self) -> list[Path]:
        many = {i: self.site_index.count(i) > 1 for i in set(self.site_index)}
        dirs = []
        for cfg, i in zip(self.run.saes, self.site_index):
            hook = hook_name(self.online.sites[i])
            dirs.append(self.out / hook / display_name(cfg)[len(hook) + 1 :] if many[i] else self.out / hook)
        return dirs

    def _build_members(self) -> list[Member]:
        t = self.run.train
        members = []
        for cfg, i, out in zip(self.run.saes, self.site_index, self._member_dirs()):
            if cfg.d_in is not None and cfg.d_in != self.lm.d_model:
                raise ConfigError("d_in", cfg.d_in, f"the model's width is {self.lm.d_model}")
            cfg.d_in = self.lm.d_model
            if self._resuming:
                # Weights, normalizer and optimizer come from the checkpoint; this sample only gives the shapes.
                sample = torch.randn(256, cfg.d_in, generator=torch.Generator().manual_seed(0))
            else:
                sample = self.stream.first_rows(i, INIT_SAMPLE_ROWS)  # normalization is estimated on the first buffer
            init_seed = zlib.crc32(f"{t.seed}:{display_name(cfg)}".encode())
            m = build_member(cfg, t, sample, init_seed, out)
            members.append(m)
        self._site_of = {id(m): i for m, i in zip(members, self.site_index)}
        return members

    def _local_batch(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's rows of every site's batch ([sites, batch/N, d])."""
        if not self.world.parallel:
            return x
        rows = x.shape[1] // self.world.size
        return x[:, self.world.rank * rows : (self.world.rank + 1) * rows]

    def _train_step(self, m: Member, x: torch.Tensor, step: int) -> dict:
        return super()._train_step(m, x[self._site_of[id(m)]], step)

    def _fingerprints(self) -> dict:
        return {}  # no activation file: the online identity in the checkpoint says which data this is

    # ---- checkpoints ------------------------------------------------------------------------
    def fit(self, resume: bool = False, overwrite: bool = False) -> list[Member]:
        """Train to the budget (see Trainer.fit)."""
        self._resuming = resume
        return super().fit(resume=resume, overwrite=overwrite)

    def _write_checkpoint(self, members: list[Member], step: int, **extra) -> None:
        # The prefetch thread may already have produced later batches: the state as of `step` is saved.
        super()._write_checkpoint(
            members, step, online=self.online.identity(), stream=self.stream.state_dict(step), **extra
        )

    def _check_saved_run(self, state: dict, members: list[Member]) -> int:
        saved = state.get("online")
        if not isinstance(saved, dict):
            raise ConfigError("resume", str(self.out), "the checkpoint is not from `saelab lm train`")
        mine = self.online.identity()
        for key, value in mine.items():
            if saved.get(key) != value:
                raise ConfigError(
                    key, value, f"differs from the checkpoint's {saved.get(key)!r}; resume needs the same run"
                )
        return super()._check_saved_run(state, members)

    def _restore(self, state: dict, members: list[Member]) -> int:
        step = super()._restore(state, members)
        self.stream.load_state_dict(state["stream"])
        if self.stream.next != step:
            raise ConfigError(
                "resume",
                str(self.out),
                f"the checkpoint's stream stands at batch {self.stream.next}, its SAEs at step {step}",
            )
        return step

    # ---- the folders --------------------------------------------------------------------------
    def _eval_data(self, m: Member) -> tuple[ActivationStore, tuple[int, int]]:
        store = self.eval_stores[self._site_of[id(m)]]
        return store, (0, store.n_rows)

    def _split_record(self, m: Member) -> dict:
        s = self.stream
        return {
            "eval_windows": [0, s.eval_windows],
            "train_windows": [s.eval_windows, s.windows],
            "eval_rows": [0, self._eval_data(m)[0].n_rows],
        }

    def _folder_extra(self, m: Member) -> dict:
        o = self.online
        layer, kind = o.sites[self._site_of[id(m)]]
        options = {"drop_first": o.drop_first, "outlier_factor": o.outlier_factor, "prepend_bos": o.prepend_bos}
        if o.text_field != "text":
            options["text_field"] = o.text_field
        dataset = o.text if not o.split or o.split == "train" else f"{o.text} [{o.split}]"
        source = {
            "source": "lm-online",
            "model": o.recorded_model_name(),
            "model_path": o.model_path(),
            "layer": layer,
            "site": kind,
            "context": o.context,
            "tokenizer": self.lm.tokenizer_name(),
            "text_source": dataset,
            "options": options,
            "first_token_id": first_token_id(self.lm.tokenizer) if o.prepend_bos else None,
        }
        s = self.stream
        return {
            "source": with_site(source, lm_site(source)),
            "dataset": dataset,
            "lm_tokens": s.tokens_seen,  # window positions the LM read for training (BOS and dropped rows included)
            "online": {
                "buffer_tokens": s.buffer_tokens,
                "windows_per_forward": o.windows_per_forward,
                "model_dtype": o.model_dtype,
                "sites": [hook_name(x) for x in o.sites],
            },
        }
