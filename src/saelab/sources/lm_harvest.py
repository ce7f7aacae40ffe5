"""Harvest a Hugging Face causal LM's activations at one site into an activation cache (resumable)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from saelab.config import require_positive_int
import numpy as np
import torch

from saelab.data.cache import CACHE_DTYPES, INDEX_COLUMNS, CacheMeta, CacheWriter, check_out_folder
from saelab.errors import SaelabError
from saelab.sources.hf import SITES, LMSpec, load_lm
from saelab.sources.text import TextConfig, first_token_id, iter_batches, iter_chunks, keep_mask


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
    existing = check_out_folder(cfg.out, extend=cfg.extend)
    text_cfg = TextConfig(cfg.text, cfg.context, cfg.prepend_bos, cfg.text_field, cfg.split)
    iter_chunks(text_cfg)  # checks a local source now, before the slow model load (datasets open lazily)

    lm = load_lm(LMSpec(cfg.model, cfg.device, cfg.model_dtype))
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
    batches = iter_batches(lm.tokenizer, text_cfg, cfg.batch_size, skip=skip)
    first = next(batches, None)  # an empty source raises here, before anything is written

    # Which token, window and position each row is, so contexts can be read back without the model.
    index_info = {"columns": list(INDEX_COLUMNS), "first_token_id": first_token_id(lm.tokenizer) if cfg.prepend_bos else None}
    writer = CacheWriter(cfg.out, meta, shard_rows=cfg.shard_rows, extra={"row_index": index_info}, extend=cfg.extend)
    writer.manifest["target_rows"] = cfg.tokens
    start_rows, windows = writer.n_rows, skip
    t0, seen = time.perf_counter(), 0
    try:
        for ids in itertools.chain([first] if first is not None else [], batches):
            if writer.n_rows >= cfg.tokens:
                break
            acts = lm.activations(ids, site)
            keep = keep_mask(acts, cfg.drop_first, cfg.outlier_factor)
            take = cfg.tokens - writer.n_rows
            rows = acts[keep][:take].float().cpu().numpy()
            index = row_index(ids, keep, windows)[:take]
            windows += ids.shape[0]
            seen += ids.numel()
            writer.append(rows, cursor={"windows": windows}, index=index)
            if log is not None and writer.n_rows // 50000 != (writer.n_rows - len(rows)) // 50000:
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                log(f"{writer.n_rows}/{cfg.tokens} rows, {rate:.0f} tokens/s")
    except KeyboardInterrupt:
        writer.flush()  # the cursor matches the buffered rows: the saved state resumes exactly
        raise
    exhausted = writer.n_rows < cfg.tokens
    writer.manifest["exhausted"] = exhausted
    manifest = writer.close(complete=True)
    seconds = time.perf_counter() - t0
    return HarvestResult(
        cfg.out, manifest["n_rows"], manifest["n_rows"] - start_rows, True, exhausted, seconds, seen / max(seconds, 1e-9)
    )
