"""Activations of a live LM, streamed from text into one shuffling buffer per site: the data of `saelab lm train`.

Each refill runs the LM (stopped after its deepest hooked block) on the next batch of windows and
appends every site's kept rows (BOS and outliers dropped as `saelab lm activations` drops them) to
that site's buffer, until each holds `buffer_tokens` rows; then each buffer is permuted and batches
are taken from its end until it falls to half, so each batch mixes rows from about
buffer_tokens / context windows. Given the run's length, the last refills read only the rows the
remaining batches take, so no buffer of rows is computed at the end and never trained on. The state (text cursor, buffer rows, permutation RNG) goes into
the training checkpoint, so a resumed run sees exactly the batches an uninterrupted one would.

Memory: per site (buffer_tokens + windows_per_forward · context) · d_model float32 values, plus
one batch of sites · batch_size · d_model and one forward's activations.

Under torchrun every rank reads the same windows, runs the LM on its share (windows r, r + N, …)
of each forward batch, and gathers the others' activations, so every rank holds the buffers one
process would hold; the trainer then steps each rank on its slice of every batch.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist

from saelab.config import require_positive_int
from saelab.errors import ConfigError, DataError
from saelab.sources.lm.model import SITES, LanguageModel
from saelab.sources.lm.site import TL_HOOKS
from saelab.sources.lm.text import TextConfig, iter_batches, keep_mask, take_windows
from saelab.util import distributed

DEFAULT_KIND = "resid_post"
# The default buffer takes at most this fraction of the memory available when the run starts, and no more rows than MAX_DEFAULT_ROWS.
DEFAULT_MEMORY_FRACTION = 0.25
MAX_DEFAULT_ROWS = 1 << 18
# Batches kept (by reference) after they are handed out: a checkpoint of an earlier step saves them; more than a prefetch runs ahead.
RECENT_BATCHES = 8


def parse_sites(text: str) -> tuple[tuple[int, str], ...]:
    """`3,6,9` (resid_post), `3,6,9:mlp_out` (one kind for all) or `3:attn_out,6` (a kind per layer) → ((layer, kind), ...)."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise ConfigError("sites", text, "name at least one layer, e.g. 3,6,9 or 6:mlp_out")
    kinds = [item.partition(":")[2] or None for item in items]
    # One kind written after the last layer only: the issue's `3,6,9:mlp_out` means every layer's mlp_out.
    shared = kinds[-1] if kinds[-1] is not None and all(k is None for k in kinds[:-1]) else None
    sites = []
    for item, kind in zip(items, kinds):
        layer = item.partition(":")[0].strip()
        kind = (kind or shared or DEFAULT_KIND).strip()
        if not layer.isdigit():
            raise ConfigError("sites", text, f"{item!r}: expected LAYER or LAYER:KIND")
        if kind not in SITES:
            raise ConfigError("sites", text, f"{item!r}: unknown site {kind!r}; choose one of {', '.join(SITES)}")
        if (int(layer), kind) not in sites:
            sites.append((int(layer), kind))
    return tuple(sites)


def hook_name(site: tuple[int, str]) -> str:
    """The TransformerLens / SAELens hook of (layer, kind), e.g. blocks.6.hook_resid_post."""
    return f"blocks.{site[0]}.{TL_HOOKS[site[1]]}"


def site_of_table(value, where: str) -> tuple[int, str]:
    """The one site an [[sae]] table names: 6, "6", "6:mlp_out" or "blocks.6.hook_mlp_out"."""
    text = str(value)
    for kind, hook in TL_HOOKS.items():
        if text.startswith("blocks.") and text.endswith("." + hook):
            text = f"{text.split('.')[1]}:{kind}"
    sites = parse_sites(text) if not isinstance(value, bool) else ()
    if len(sites) != 1:
        raise ConfigError(where, value, 'must name one site, e.g. 6 or "6:mlp_out"')
    return sites[0]


@dataclass(frozen=True)
class OnlineConfig:
    """What `saelab lm train` reads: the model, the text, the sites and how rows are buffered."""

    model: str
    text: str
    sites: tuple[tuple[int, str], ...]
    context: int = 64
    windows_per_forward: int = 32
    buffer_tokens: int | None = None  # rows per site buffer; None: sized to memory (default_buffer_tokens)
    model_dtype: str = "float32"
    device: str = "cpu"
    drop_first: bool = True
    outlier_factor: float | None = None
    prepend_bos: bool = True
    text_field: str = "text"
    split: str = "train"
    eval_tokens: int = 4096  # held-out rows per site, from the first windows of the text
    model_name: str | None = None  # hub name recorded in the folders (default: derived from `model`)

    def validate(self) -> OnlineConfig:
        """Check every field; ConfigError naming the first bad one."""
        if not self.sites:
            raise ConfigError("sites", self.sites, "name at least one site")
        for name in ("context", "windows_per_forward", "eval_tokens"):
            require_positive_int(name, getattr(self, name))
        if self.context < 2:
            raise ConfigError("context", self.context, "must be at least 2")
        if self.buffer_tokens is not None:
            require_positive_int("buffer_tokens", self.buffer_tokens)
        if self.outlier_factor is not None and not (
            isinstance(self.outlier_factor, (int, float)) and self.outlier_factor > 0
        ):
            raise ConfigError("drop_outliers", self.outlier_factor, "must be a number > 0")
        return self

    def text_config(self) -> TextConfig:
        """How the text is cut into windows."""
        return TextConfig(self.text, self.context, self.prepend_bos, self.text_field, self.split)

    def identity(self) -> dict:
        """What must not change between a run and its resume (the device may)."""
        d = asdict(self)
        d.pop("device")
        d["sites"] = [list(s) for s in self.sites]
        return d

    def recorded_model_name(self) -> str:
        """The hub name for the folders: --model-name, else --model when it is a hub id, else the file or folder's name."""
        if self.model_name:
            return self.model_name
        path = os.path.expanduser(self.model)
        if not os.path.exists(path) and not self.model.startswith((".", "/", "~")):
            return self.model.rsplit("/", 1)[0] if self.model.endswith(".gguf") else self.model
        name = os.path.basename(os.path.normpath(path))
        return name.removesuffix(".gguf")

    def model_path(self) -> str | None:
        """The local file or folder the model was loaded from (None for a hub name)."""
        path = os.path.expanduser(self.model)
        return os.path.abspath(path) if os.path.exists(path) else None


def default_buffer_tokens(n_sites: int, d_model: int, batch_size: int) -> int:
    """Rows per site buffer when none is given: a quarter of available memory over all sites, at most 2^18, at least 4 batches."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not every OS reports it
        available = 8 * 2**30
    rows = int(available * DEFAULT_MEMORY_FRACTION) // (4 * d_model * n_sites)
    return max(4 * batch_size, min(MAX_DEFAULT_ROWS, rows))


def buffer_bytes(buffer_tokens: int, n_sites: int, d_model: int, windows_per_forward: int, context: int) -> int:
    """The buffers' memory: sites · (buffer_tokens + windows_per_forward · context) · d_model · 4 bytes."""
    return n_sites * (buffer_tokens + windows_per_forward * context) * d_model * 4


class OnlineStream:
    """Batches [sites, batch_size, d_model] of shuffled LM activations, produced in order; resumable via state_dict."""

    def __init__(
        self,
        lm: LanguageModel,
        cfg: OnlineConfig,
        batch_size: int,
        seed: int,
        world: distributed.World | None = None,
        total_batches: int | None = None,
    ):
        self.lm = lm
        # The run's length in batches: the LM then reads only the rows those batches take (None: no end).
        self.total_batches = total_batches
        self.cfg = cfg
        self.sites = [lm.site(layer, kind) for layer, kind in cfg.sites]
        self.batch_size = batch_size
        self.world = world or distributed.World()
        self.d_model = lm.d_model
        self.buffer_tokens = cfg.buffer_tokens or default_buffer_tokens(len(self.sites), self.d_model, batch_size)
        if self.buffer_tokens < 2 * batch_size:
            raise ConfigError(
                "buffer_tokens",
                self.buffer_tokens,
                f"must hold at least two batches ({2 * batch_size} rows): it is refilled when half empty",
            )
        capacity = self.buffer_tokens + cfg.windows_per_forward * cfg.context
        self.buffers = [torch.empty(capacity, self.d_model) for _ in self.sites]
        self.fill = [0] * len(self.sites)
        self.position = 0  # batches handed out
        self.eval_windows = math.ceil(cfg.eval_tokens / max(1, cfg.context - int(cfg.drop_first)))
        self.windows = self.eval_windows  # text windows read so far (the held-out ones first)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._batches: Iterator[torch.Tensor] | None = None
        # A prefetch thread may produce batches ahead of the step being checkpointed: the lock keeps a
        # checkpoint from reading a buffer mid-refill, and the batches produced past that step are saved
        # with it (`pending`), to be handed out again first on resume.
        self._lock = threading.Lock()
        self.next = 0  # the next batch to hand out (≤ position: the ones in between are pending)
        self._recent: collections.deque = collections.deque(maxlen=RECENT_BATCHES)
        self._pending: dict[int, np.ndarray] = {}

    @property
    def tokens_seen(self) -> int:
        """Tokens (window positions, BOS included) the LM has read for training."""
        return (self.windows - self.eval_windows) * self.cfg.context

    def _forward(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """Float32 kept rows of every site for one batch of windows (data-parallel: each rank runs its share)."""
        acts = [a.float() for a in self._shared_forward(ids)]
        return [a[keep_mask(a, self.cfg.drop_first, self.cfg.outlier_factor)].cpu() for a in acts]

    def _shared_forward(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """Activations [windows, context, d] of every site; under torchrun rank r computes windows r::N and all gather."""
        if not self.world.parallel:
            return [a.clone() for a in self.lm.activations_at(ids, self.sites)]  # clone: out of inference mode
        n, size, rank = ids.shape[0], self.world.size, self.world.rank
        per = -(-n // size)
        mine = ids[rank::size]
        acts = self.lm.activations_at(mine, self.sites) if mine.shape[0] else None
        out = []
        for i in range(len(self.sites)):
            local = torch.zeros(per, ids.shape[1], self.d_model, dtype=torch.float32)
            if acts is not None:
                local[: mine.shape[0]] = acts[i].float().cpu()
            gathered = [torch.empty_like(local) for _ in range(size)]
            dist.all_gather(gathered, local, group=self.world.group)
            full = torch.empty(n, ids.shape[1], self.d_model)
            for r in range(size):
                count = len(range(r, n, size))
                full[r::size] = gathered[r][:count]
            out.append(full)
        return out

    def held_out(self) -> list[np.ndarray]:
        """Each site's rows [n, d] from the first eval_windows windows of the text (never trained on)."""
        batches = take_windows(
            self.lm.tokenizer, self.cfg.text_config(), self.cfg.windows_per_forward, self.eval_windows
        )
        parts = [self._forward(ids) for ids in batches]
        return [torch.cat([p[i] for p in parts]).numpy() for i in range(len(self.sites))]

    def _next_ids(self) -> torch.Tensor:
        if self._batches is None:
            self._batches = iter_batches(
                self.lm.tokenizer, self.cfg.text_config(), self.cfg.windows_per_forward, skip=self.windows
            )
        ids = next(self._batches, None)
        if ids is None:
            raise DataError(
                f"text={self.cfg.text!r}: ran out after {self.windows} windows ({self.tokens_seen} training tokens); "
                "give more text or ask for fewer --tokens"
            )
        return ids

    def _rows_needed(self) -> float:
        """Rows still to hand out, this batch included (at least one batch: a prefetch may ask past the end)."""
        if self.total_batches is None:
            return math.inf
        return max(self.total_batches - self.position, 1) * self.batch_size

    def _refill(self) -> None:
        """Read windows until every buffer holds buffer_tokens rows (or all the run still needs), then permute each buffer's rows."""
        # Rows read past the run's end would be computed and never trained on (up to a whole buffer).
        target = min(self.buffer_tokens, self._rows_needed())
        per_window = self.cfg.context - int(self.cfg.drop_first)
        while min(self.fill) < target:
            ids = self._next_ids()
            short = -(-(target - min(self.fill)) // per_window)  # windows the run's last rows take
            if target < self.buffer_tokens and short < ids.shape[0]:
                # The run's last forward reads only those; the cursor stays after them, so the text is reopened there if read on.
                ids, self._batches = ids[:short], None
            rows = self._forward(ids)
            self.windows += ids.shape[0]
            for i, r in enumerate(rows):
                take = min(len(r), self.buffers[i].shape[0] - self.fill[i])
                self.buffers[i][self.fill[i] : self.fill[i] + take] = r[:take]
                self.fill[i] += take
        for i, buf in enumerate(self.buffers):
            n = self.fill[i]
            buf[:n] = buf[:n][torch.randperm(n, generator=self.generator)]

    def first_rows(self, site: int, limit: int) -> torch.Tensor:
        """Up to `limit` rows of the first filled buffer of `site` (what SAE initialization and normalization see)."""
        if self.position == 0 and min(self.fill) == 0:  # before any batch, so under the lock of none
            self._refill()
        return self.buffers[site][: min(limit, self.fill[site])].clone()

    def batch(self, position: int) -> tuple[np.ndarray, None]:
        """(float32 [sites, batch_size, d_model], None) for batch `position`, which must be the next one."""
        with self._lock:
            if position != self.next:
                raise RuntimeError(f"online stream: batch {position} asked for, the next one is {self.next}")
            self.next += 1
            if position in self._pending:
                return self._pending.pop(position), None
            need = self._rows_needed()
            if any(n - self.batch_size < self.buffer_tokens // 2 and n < need for n in self.fill):
                self._refill()
            out = np.empty((len(self.sites), self.batch_size, self.d_model), dtype=np.float32)
            for i, buf in enumerate(self.buffers):
                n = self.fill[i]
                out[i] = buf[n - self.batch_size : n].numpy()
                self.fill[i] = n - self.batch_size
            self._recent.append((self.position, out))  # the array handed out, not a copy
            self.position += 1
        return out, None

    def order_hash(self) -> str:
        """First 16 hex digits of a SHA-256 of what decides the batch order (seed, buffer and batch sizes, sites,
        windows per forward) and the first buffer's permutation, as the shuffle draws it; reads no text."""
        layout = [
            self.seed,
            self.buffer_tokens,
            self.batch_size,
            self.cfg.context,
            self.cfg.windows_per_forward,
            self.eval_windows,
            [str(s) for s in self.cfg.sites],
        ]
        digest = hashlib.sha256(json.dumps(layout).encode())
        perm = torch.randperm(self.buffer_tokens, generator=torch.Generator().manual_seed(self.seed))
        digest.update(perm.numpy().astype("int64").tobytes())
        return digest.hexdigest()[:16]

    def state_dict(self, position: int | None = None) -> dict:
        """Cursor, buffer rows and RNG, with the batches produced from `position` (default: the next) on, to hand out again."""
        with self._lock:
            position = self.next if position is None else position
            made = {**dict(self._recent), **self._pending}
            missing = [p for p in range(position, self.position) if p not in made]
            if position > self.position or missing:
                raise RuntimeError(
                    f"online stream: cannot save the state of batch {position} (produced {self.position})"
                )
            return {
                "position": self.position,
                "next": position,
                "windows": self.windows,
                "fill": list(self.fill),
                "buffers": [buf[:n].clone() for buf, n in zip(self.buffers, self.fill)],
                "pending": [torch.from_numpy(made[p]) for p in range(position, self.position)],
                "generator": self.generator.get_state(),
            }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state_dict (the same text, model and sites)."""
        self.position, self.windows = int(state["position"]), int(state["windows"])
        self.fill = [int(n) for n in state["fill"]]
        for buf, saved, n in zip(self.buffers, state["buffers"], self.fill):
            if tuple(saved.shape) != (n, self.d_model):
                raise DataError(
                    f"checkpoint: stream buffer of shape {tuple(saved.shape)}, expected ({n}, {self.d_model})"
                )
            buf[:n] = saved
        self.generator.set_state(state["generator"])
        self.next = int(state["next"])
        self._pending = {self.next + j: t.numpy() for j, t in enumerate(state["pending"])}
        if self.next + len(self._pending) != self.position:
            raise DataError(
                f"checkpoint: {len(self._pending)} pending batches from batch {self.next}, but the stream stands at {self.position}"
            )
        self._recent.clear()
        self._batches = None  # reopened at the saved cursor
