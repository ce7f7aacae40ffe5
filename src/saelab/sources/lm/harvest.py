"""Harvest a Hugging Face causal LM's activations at one site into an activation cache (resumable).

Under `torchrun --nproc-per-node N` every rank runs the model on every N-th batch of windows and
writes its own shards of the one cache (data/ranked_cache.py); rank 0 writes the manifest. Each
rank tokenizes the whole text to find its batches (cheap beside the model's forward).
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from saelab.config import require_positive_int
from saelab.data.cache import CACHE_DTYPES, INDEX_COLUMNS, CacheMeta, check_out_folder
from saelab.data.ranked_cache import RankedCacheWriter
from saelab.errors import SaelabError
from saelab.sources.base import with_site
from saelab.sources.lm.model import SITES, LMSpec, load_lm
from saelab.sources.lm.site import lm_site
from saelab.sources.lm.text import TextConfig, first_token_id, iter_batches, iter_chunks, keep_mask
from saelab.util import distributed


@dataclass(frozen=True)
class HarvestConfig:
    """Everything `saelab lm activations` needs."""

    model: str
    layer: int
    site: str
    text: str
    tokens: int
    out: str
    context: int = 64
    dtype: str = "float32"  # dtype of the cache
    model_dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 32
    shard_rows: int = 65536
    drop_first: bool = True
    outlier_factor: float | None = None
    prepend_bos: bool = True
    text_field: str = "text"
    split: str = "train"
    extend: bool = False  # append to a complete cache of the same identity up to `tokens` rows


@dataclass(frozen=True)
class HarvestResult:
    """What a harvest wrote and how fast."""

    out: str
    rows: int
    new_rows: int
    complete: bool
    exhausted: bool  # the text ran out before `tokens` rows
    seconds: float
    tokens_per_s: float  # model tokens (incl. dropped positions) through the forward per second


def row_index(ids: torch.Tensor, keep: torch.Tensor, first_window: int) -> np.ndarray:
    """int32 [n_kept, 3]: (token id, window index in the text, position) of each kept position, in row order."""
    batch, seq = ids.shape
    window = torch.arange(first_window, first_window + batch).unsqueeze(1).expand(batch, seq)
    position = torch.arange(seq).unsqueeze(0).expand(batch, seq)
    keep = keep.cpu()
    return torch.stack([ids.cpu()[keep], window[keep], position[keep]], dim=1).numpy().astype(np.int32)


def harvest(cfg: HarvestConfig, log=None) -> HarvestResult:
    """Write (or resume) an activation cache of cfg.tokens rows; validates all input before writing."""

    if cfg.site not in SITES:
        raise SaelabError(f"site={cfg.site!r}: unknown site; choose one of {', '.join(SITES)}")
    if cfg.dtype not in CACHE_DTYPES:
        raise SaelabError(f"dtype={cfg.dtype!r}: cache dtype must be one of {', '.join(CACHE_DTYPES)}")
    for name in ("tokens", "batch_size", "shard_rows", "context"):
        require_positive_int(name, getattr(cfg, name))
    world = distributed.init_from_env()  # one process unless launched by torchrun
    # Rank 0 reads the folder before anyone writes into it; an error there stops every rank.
    existing = world.on_main(lambda: check_out_folder(cfg.out, extend=cfg.extend))
    text_cfg = TextConfig(cfg.text, cfg.context, cfg.prepend_bos, cfg.text_field, cfg.split)
    iter_chunks(text_cfg)  # checks a local source now, before the slow model load (datasets open lazily)

    device = cfg.device
    if world.parallel and device == "cuda":  # one GPU per rank on a multi-GPU machine
        device = f"cuda:{os.environ.get('LOCAL_RANK', world.rank)}"
    lm = load_lm(LMSpec(cfg.model, device, cfg.model_dtype))
    site = lm.site(cfg.layer, cfg.site)
    options = {"drop_first": cfg.drop_first, "outlier_factor": cfg.outlier_factor, "prepend_bos": cfg.prepend_bos}
    if cfg.text_field != "text":
        options["text_field"] = cfg.text_field
    meta = CacheMeta(
        model=cfg.model,
        site=cfg.site,
        layer=cfg.layer,
        dtype=cfg.dtype,
        d_in=lm.d_model,
        context=cfg.context,
        tokenizer=lm.tokenizer_name(),
        text_source=cfg.text if not cfg.split or cfg.split == "train" else f"{cfg.text} [{cfg.split}]",
        options=options,
    )
    skip = int(existing.get("cursor", {}).get("windows", 0)) if existing else 0
    # Batch b goes to rank b mod N: the batches a single process forms, dealt out in turn.
    mine = itertools.islice(
        iter_batches(lm.tokenizer, text_cfg, cfg.batch_size, skip=skip), world.rank, None, world.size
    )
    first = next(mine, None)  # an empty source raises here, before anything is written

    # Which token, window and position each row is, so contexts can be read back without the model.
    index_info = {
        "columns": list(INDEX_COLUMNS),
        "first_token_id": first_token_id(lm.tokenizer) if cfg.prepend_bos else None,
    }
    writer = RankedCacheWriter(
        world,
        cfg.out,
        meta,
        cfg.tokens,
        shard_rows=cfg.shard_rows,
        # The hook, for readers that do not know this source (an older cache being extended keeps its manifest).
        extra=with_site({"row_index": index_info}, lm_site(asdict(meta))),
        extend=cfg.extend,
    )
    writer.manifest["target_rows"] = cfg.tokens
    start_rows = writer.n_rows
    t0 = time.perf_counter()
    log = log if world.is_main else None
    try:
        # A rank whose text ran out still takes part in every round (with None) until all stop.
        for round_, ids in enumerate(itertools.chain([first], mine, itertools.repeat(None))):
            if writer.full:
                break
            rows = index = None
            if ids is not None:
                acts = lm.activations(ids, site)
                keep = keep_mask(acts, cfg.drop_first, cfg.outlier_factor)
                rows = acts[keep].float().cpu().numpy()
                index = row_index(ids, keep, skip + (round_ * world.size + world.rank) * cfg.batch_size)
            before = writer.n_rows
            going = writer.add(0 if ids is None else ids.shape[0], rows, index)
            if log is not None and writer.n_rows // 50000 != before // 50000:
                rate = (writer.windows - skip) * cfg.context / max(time.perf_counter() - t0, 1e-9)
                log(f"{writer.n_rows}/{cfg.tokens} rows, {rate:.0f} tokens/s")
            if not going:
                break
    except KeyboardInterrupt:
        writer.interrupted()  # one process: the cursor matches the buffered rows, so the saved state resumes exactly
        raise
    exhausted = writer.n_rows < cfg.tokens
    manifest = writer.close(exhausted=exhausted)
    seconds = time.perf_counter() - t0
    seen = (writer.windows - skip) * cfg.context  # every rank's windows through the model, dropped positions included
    return HarvestResult(
        cfg.out,
        manifest["n_rows"],
        manifest["n_rows"] - start_rows,
        True,
        exhausted,
        seconds,
        seen / max(seconds, 1e-9),
    )
