"""`saelab lm train`: the Trainer given OnlineData, rows from a live LM (sources/lm/stream.py), not a cache.

Only the data side changes (the training.data seam): the training step, members, logs,
checkpoints, convergence and folders are the Trainer's own. Each batch is [sites, batch_size,
d_model]; each SAE steps on its site's rows. The checkpoint adds the stream's state (text cursor,
buffers, RNG), so a resume continues with exactly the batches an uninterrupted run would have used.
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
from saelab.methods.resolve import display_name
from saelab.sources.base import with_site
from saelab.sources.lm.model import LanguageModel, LMSpec, load_lm
from saelab.sources.lm.site import lm_site
from saelab.sources.lm.stream import OnlineConfig, OnlineStream, buffer_bytes, hook_name
from saelab.sources.lm.text import first_token_id, iter_chunks
from saelab.training.data import INIT_SAMPLE_ROWS, TrainingData
from saelab.training.member import Member, build_member
from saelab.training.strategy import DataParallel, Strategy
from saelab.training.trainer import Trainer
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


class OnlineData(TrainingData):
    """The rows of every site of a live LM on one pass over streamed text; the first windows are held out."""

    def __init__(
        self,
        run: RunConfig,
        world: distributed.World,
        online: OnlineConfig,
        site_index: list[int],
        log=None,
        lm: LanguageModel | None = None,
        overlap: bool = False,
    ):
        self.online = online.validate()
        if len(site_index) != len(run.saes):
            raise ConfigError("sae", len(run.saes), f"{len(site_index)} site indices given")
        self.site_index = list(site_index)
        self.world = world
        t = self.train = run.train
        if t.steps is None and t.tokens is None:
            raise ConfigError("tokens", None, "required: how many training tokens (or --steps)")
        if t.epochs is not None:
            raise ConfigError("epochs", t.epochs, "a text stream has no epochs; give --tokens")
        next(
            iter_chunks(online.text_config()), None
        )  # a missing file or unreachable dataset fails before the slow model load
        if overlap and world.parallel:
            # The prefetch thread's all-gathers would interleave with the steps' all-reduces, in a different order on each rank.
            raise ConfigError("overlap", True, f"runs in one process; this run has {world.size} ranks (drop --overlap)")
        device = t.device
        if world.parallel and device == "cuda":  # one GPU per rank
            device = f"cuda:{os.environ.get('LOCAL_RANK', world.rank)}"
        # `lm`: a model already loaded from online.model (a notebook or bench loads it once)
        self.lm = lm if lm is not None else load_lm(LMSpec(online.model, device, online.model_dtype))
        self.stream = OnlineStream(self.lm, online, t.batch_size, t.seed, world, total_batches=self.budget(t))
        if log is not None and world.is_main:
            sites, width = len(online.sites), self.lm.d_model
            mib = buffer_bytes(self.stream.buffer_tokens, sites, width, online.windows_per_forward, online.context)
            log(
                f"{sites} sites × {self.stream.buffer_tokens} buffered rows × d_model {width}: {mib / 2**20:.0f} MiB of buffers"
            )
        # Held-out rows of each site (the first windows of the text), for the final evaluation and until_converged.
        self.eval_stores = [
            ActivationStore.from_array(rows, name=f"<held-out {hook_name(s)}>")
            for rows, s in zip(self.stream.held_out(), online.sites)
        ]
        self.eval_range = (0, min(store.n_rows for store in self.eval_stores))  # what until_converged checks is there
        self._site_of: dict[int, int] = {}  # id(member) -> its site's index, set by build_members

    # ---- batches and members ------------------------------------------------------------------
    def member_dirs(self, run: RunConfig, out: Path) -> list[Path]:
        """<out>/<hook> per site, or <out>/<hook>/<name> where a site trains several SAEs."""
        many = {i: self.site_index.count(i) > 1 for i in set(self.site_index)}
        dirs = []
        for cfg, i in zip(run.saes, self.site_index):
            hook = hook_name(self.online.sites[i])
            dirs.append(out / hook / display_name(cfg)[len(hook) + 1 :] if many[i] else out / hook)
        return dirs

    def build_members(self, run: RunConfig, strategy: Strategy, dirs: list[Path], resuming: bool) -> list[Member]:
        """One whole SAE per config, initialized from its site's first buffer (data-parallel ranks only)."""
        if not isinstance(strategy, DataParallel):
            raise ConfigError("shard_latents", True, "a live LM trains whole SAEs on data-parallel ranks")
        t = run.train
        members = []
        for cfg, i, out in zip(run.saes, self.site_index, dirs):
            if cfg.d_in is not None and cfg.d_in != self.lm.d_model:
                raise ConfigError("d_in", cfg.d_in, f"the model's width is {self.lm.d_model}")
            cfg.d_in = self.lm.d_model
            if resuming:
                # Weights, normalizer and optimizer come from the checkpoint; this sample only gives the shapes.
                sample = torch.randn(256, cfg.d_in, generator=torch.Generator().manual_seed(0))
            else:
                sample = self.stream.first_rows(i, INIT_SAMPLE_ROWS)  # normalization is estimated on the first buffer
            init_seed = zlib.crc32(f"{t.seed}:{display_name(cfg)}".encode())
            members.append(build_member(cfg, t, sample, init_seed, out))
        self._site_of = {id(m): i for m, i in zip(members, self.site_index)}
        return members

    def local_batch(self, x: torch.Tensor, strategy: Strategy) -> torch.Tensor:
        """This rank's rows of every site's batch ([sites, batch/N, d]): the strategy's slice of each."""
        return strategy.local_batch(x.transpose(0, 1)).transpose(0, 1)

    def member_rows(self, m: Member, x: torch.Tensor) -> torch.Tensor:
        """The rows of m's site."""
        return x[self._site_of[id(m)]]

    # ---- checkpoints ------------------------------------------------------------------------
    # fingerprints() stays {}: no activation file; the online identity in the checkpoint says which data this is.
    def checkpoint_extra(self, step: int) -> dict:
        """The run's online identity and the stream as of `step` (a prefetch thread may have produced later batches)."""
        return {"online": self.online.identity(), "stream": self.stream.state_dict(step)}

    def check_saved(self, state: dict, out: Path) -> None:
        """The checkpoint must come from `saelab lm train` with the same model, sites and text."""
        saved = state.get("online")
        if not isinstance(saved, dict):
            raise ConfigError("resume", str(out), "the checkpoint is not from `saelab lm train`")
        for key, value in self.online.identity().items():
            if saved.get(key) != value:
                raise ConfigError(
                    key, value, f"differs from the checkpoint's {saved.get(key)!r}; resume needs the same run"
                )

    def restore(self, state: dict, step: int, out: Path) -> None:
        """The stream continues where the checkpoint's SAEs stopped."""
        self.stream.load_state_dict(state["stream"])
        if self.stream.next != step:
            raise ConfigError(
                "resume",
                str(out),
                f"the checkpoint's stream stands at batch {self.stream.next}, its SAEs at step {step}",
            )

    # ---- the folders --------------------------------------------------------------------------
    def eval_data(self, m: Member) -> tuple[ActivationStore, tuple[int, int]]:
        """The held-out rows of m's site."""
        store = self.eval_stores[self._site_of[id(m)]]
        return store, (0, store.n_rows)

    def split_record(self, m: Member) -> dict:
        """Which text windows trained and which evaluated, and the held-out rows."""
        s = self.stream
        return {
            "eval_windows": [0, s.eval_windows],
            "train_windows": [s.eval_windows, s.windows],
            "eval_rows": [0, self.eval_data(m)[0].n_rows],
        }

    def folder_extra(self, m: Member) -> dict:
        """The site's `source` (model, layer, text), the dataset, LM tokens read and the stream's settings."""
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


class OnlineTrainer(Trainer):
    """The Trainer given OnlineData: trains the SAEs of every site on one pass of a live LM over streamed text."""

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
        def data(run: RunConfig, world: distributed.World) -> OnlineData:
            return OnlineData(run, world, online, site_index, log=log, lm=lm, overlap=overlap)

        super().__init__(run, progress=progress, world=world, data=data)
        self.prefetch_depth = self.OVERLAP_DEPTH if overlap else self.PREFETCH_DEPTH
        self.lm, self.online = self.data.lm, self.data.online
