"""What the feature analyses read: activation rows with the token, window and position of each, and an SAE's codes.

The source that wrote a folder (saelab.sources.registry) reads it: an LM activation cache
(`saelab lm activations`) stores a row index beside every shard (token id, window index in the
text, position in the window); an OthelloGPT harvest (`saelab othello activations`) stores
(game, move) per row and the seed that regenerates the games. Either becomes a TokenGrid
(saelab.data.token_grid): windows x positions of token ids and of row numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from saelab.data.source_info import read_source_info
from saelab.data.store import ActivationStore
from saelab.data.token_grid import UNKNOWN, TokenGrid
from saelab.errors import ConfigError, DataError
from saelab.evals.evaluate import held_out_rows
from saelab.model.site import ModelSite
from saelab.sources.registry import get_source, source_of


class TokenText:
    """Display strings of token ids, decoded one id at a time and remembered."""

    def __init__(self, decode_one: Callable[[int], str]):
        self._decode_one = decode_one
        self._known: dict[int, str] = {}

    def __call__(self, ids: Sequence[int]) -> list[str]:
        """Strings of these ids; UNKNOWN reads as '?'."""
        out = []
        for i in ids:
            i = int(i)
            if i not in self._known:
                self._known[i] = "?" if i == UNKNOWN else self._decode_one(i)
            out.append(self._known[i])
        return out

    def table(self, ids) -> dict[str, str]:
        """{str(id): text} for a set of ids (JSON keys are strings)."""
        uniq = sorted({int(i) for i in ids})
        return {str(i): s for i, s in zip(uniq, self(uniq))}


@dataclass
class FeatureData:
    """Rows to read (store), their tokens (grid) and, where known, how to show tokens and which model made them."""

    path: str
    kind: str  # the name of the source that wrote the folder (saelab.sources.registry)
    store: ActivationStore
    grid: TokenGrid
    meta: dict  # the provenance record: cache manifest, source.json
    labels: np.ndarray | None = None  # per-row labels where the source has them (OthelloGPT: board state [N, 64])
    model: str | None = None  # LM the rows came from (from the manifest unless overridden)
    _text: TokenText | None = field(default=None, repr=False)

    @property
    def first_token_id(self) -> int | None:
        """The token each LM window starts with (BOS), if the harvest added one."""
        info = self.meta.get("row_index") or {}
        return info.get("first_token_id")

    @property
    def outlier_factor(self) -> float | None:
        """The harvest's outlier screen (rows with norm > factor x batch median were not cached)."""
        value = (self.meta.get("options") or {}).get("outlier_factor")
        return None if value is None else float(value)

    def text(self) -> TokenText:
        """Token id -> display string (loads the LM's tokenizer on first use)."""
        if self._text is None:
            self._text = TokenText(get_source(self.kind).token_decoder(self.model))
        return self._text


def load_feature_data(path: str | Path, model: str | None = None) -> FeatureData:
    """The rows, tokens and labels of a data folder, read by the source that wrote it (an LM cache, an OthelloGPT harvest)."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(
            f"activations={str(path)!r}: not a folder (need an LM activation cache or an OthelloGPT harvest)"
        )
    record = read_source_info(folder)
    if record is None:
        raise DataError(
            f"activations={str(path)!r}: holds neither manifest.json (LM cache) nor source.json (OthelloGPT harvest)"
        )
    source = source_of(record)
    if source is None:
        raise DataError(f"activations={str(path)!r}: source={record.get('source')!r} is no source saelab knows")
    rows = source.feature_rows(folder, record, model)
    return FeatureData(str(folder), source.name, rows.store, rows.grid, rows.meta, labels=rows.labels, model=rows.model)


@torch.no_grad()
def iter_codes(
    sae, store: ActivationStore, lo: int, hi: int, batch_size: int = 4096
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, codes [b, n_latents]) of rows lo..hi-1 in batches, encoded from raw activations."""
    for start in range(lo, hi, batch_size):
        x = torch.from_numpy(store.read_range(start, min(hi, start + batch_size)))
        yield start, sae.encode(x).float()


@torch.no_grad()
def codes_of_rows(
    sae, store: ActivationStore, rows: np.ndarray, latents: Sequence[int], batch_size: int = 4096
) -> np.ndarray:
    """Codes [len(rows), len(latents)] of the given rows (any order, repeats allowed)."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros((len(rows), len(latents)), dtype=np.float32)
    cols = torch.as_tensor(list(latents), dtype=torch.long)
    for i in range(0, len(rows), batch_size):
        x = torch.from_numpy(store.read(rows[i : i + batch_size]))
        out[i : i + batch_size] = sae.encode(x)[:, cols].float().numpy()
    return out


def window_aligned(grid: TokenGrid, row: int) -> int:
    """The first row at or after `row` that starts a window's rows, so a split never cuts a window in two."""
    n = grid.n_rows
    while 0 < row < n and grid.row_window[row] == grid.row_window[row - 1]:
        row += 1
    return min(row, n)


def split_rows(
    record: dict | None, data: FeatureData, held_out_fraction: float = 0.1
) -> tuple[tuple[int, int], tuple[int, int], str]:
    """(build rows, held-out rows, how chosen): the SAE's own held-out rows when `data` is its training file, else the last fraction."""
    if not 0 < held_out_fraction < 1:
        raise ConfigError("held_out_fraction", held_out_fraction, "must lie strictly between 0 and 1")
    held = held_out_rows(record, data.store)
    n = data.store.n_rows
    if held is not None and held[0] > 0:
        lo = window_aligned(data.grid, int(held[0]))
        label = "the SAE's held-out rows"
    else:
        lo = window_aligned(data.grid, int(round(n * (1 - held_out_fraction))))
        label = f"the last {held_out_fraction:.0%} of rows"
    if lo <= 0 or lo >= n:
        raise DataError(f"activations={data.path!r}: {n} rows are too few to hold out whole windows")
    return (0, lo), (lo, n), label


def check_same_site(site: ModelSite | None, meta: dict | None, where: str) -> None:
    """DataError when a cache (its manifest `meta`) holds another hook than the SAE's `site`.

    Both have the same width, so nothing else would stop the analysis mixing one site's SAE with
    another site's activations; an SAE or cache that names no site is not checked.
    """
    source = source_of(meta)
    theirs = source.site(meta) if source is not None and site is not None else None
    if theirs is not None and theirs.hook_name != site.hook_name:
        raise DataError(f"activations={where!r}: holds {theirs.hook_name}, but the SAE was trained on {site.hook_name}")
