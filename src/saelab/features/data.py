"""What the feature analyses read: activation rows with the token, window and position of each, and an SAE's codes.

Two sources give this. An LM activation cache (`saelab lm activations`) stores a row index
beside every shard (token id, window index in the text, position in the window). An OthelloGPT
harvest folder (`saelab othello activations`) stores (game, move) per row and the seed that
regenerates the games, so the moves before every position are known. Either becomes a
TokenGrid: windows x positions of token ids (-1 where unknown) and of row numbers (-1 where the
position has no cached row: BOS, dropped outliers, positions outside the harvest).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from saelab.data.cache import read_row_index, verify_cache
from saelab.data.store import ActivationStore
from saelab.errors import ConfigError, DataError
from saelab.evals.evaluate import held_out_rows
from saelab.model.site import TL_HOOKS, ModelSite

UNKNOWN = -1  # token id where a grid position has no known token
FILES = "abcdefgh"


@dataclass
class TokenGrid:
    """Token ids and cached row numbers of every (window, position); rows map back by row_window/row_position."""

    tokens: np.ndarray  # int64 [W, T], UNKNOWN where not known
    rows: np.ndarray  # int64 [W, T], -1 where the position has no cached row
    row_window: np.ndarray  # int64 [N]: grid window of each cached row
    row_position: np.ndarray  # int64 [N]
    first_window: int = 0  # window id (in the text) of grid window 0

    @classmethod
    def from_index(cls, index: np.ndarray, context: int, first_token_id: int | None = None) -> "TokenGrid":
        """Grid from a cache's [N, 3] (token, window, position) index; position 0 gets first_token_id where given."""
        index = np.asarray(index, dtype=np.int64)
        if len(index) == 0:
            raise DataError("activations: the cache holds no rows")
        w0 = int(index[:, 1].min())
        n_windows = int(index[:, 1].max()) - w0 + 1
        if index[:, 2].max() >= context or index[:, 2].min() < 0:
            raise DataError(f"activations: row index has positions outside 0..{context - 1}")
        win = index[:, 1] - w0
        tokens = np.full((n_windows, context), UNKNOWN, dtype=np.int64)
        rows = np.full((n_windows, context), -1, dtype=np.int64)
        tokens[win, index[:, 2]] = index[:, 0]
        rows[win, index[:, 2]] = np.arange(len(index))
        if first_token_id is not None:
            # Every window of this cache began with this token; its row was dropped at harvest.
            present = np.unique(win)
            col0 = tokens[present, 0]
            tokens[present, 0] = np.where(col0 == UNKNOWN, first_token_id, col0)
        return cls(tokens, rows, win, index[:, 2].copy(), w0)

    @property
    def n_rows(self) -> int:
        """Number of cached rows the grid maps."""
        return int(len(self.row_window))

    @property
    def context(self) -> int:
        """Positions per window."""
        return int(self.tokens.shape[1])

    def context_of(self, row: int, before: int, after: int) -> tuple[list[int], list[int], int]:
        """(token ids, row numbers, index of `row` among them) of the positions around a cached row, within its window."""
        w, p = int(self.row_window[row]), int(self.row_position[row])
        lo, hi = max(0, p - before), min(self.context, p + after + 1)
        return self.tokens[w, lo:hi].tolist(), self.rows[w, lo:hi].tolist(), p - lo

    def windows_of_rows(self, lo: int, hi: int) -> np.ndarray:
        """Grid windows (sorted, unique) that hold rows lo..hi-1."""
        return np.unique(self.row_window[lo:hi])


def square_name(square: int) -> str:
    """Board square 0..63 (row-major from a1) as 'a1'..'h8'."""
    return f"{FILES[square % 8]}{square // 8 + 1}"


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
    kind: str  # "lm" or "othello"
    store: ActivationStore
    grid: TokenGrid
    meta: dict  # the cache manifest or the OthelloGPT source.json
    labels: np.ndarray | None = None  # OthelloGPT board labels [N, 64] (0 empty, 1 mine, 2 theirs)
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
            if self.kind == "othello":
                self._text = TokenText(square_name)
            else:
                from saelab.sources.lm.model import load_tokenizer

                tok = load_tokenizer(self.model)
                self._text = TokenText(lambda i: tok.decode([i]))
        return self._text


def load_feature_data(path: str | Path, model: str | None = None) -> FeatureData:
    """An LM activation cache with its row index, or an OthelloGPT harvest folder with regenerated games."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(
            f"activations={str(path)!r}: not a folder (need an LM activation cache or an OthelloGPT harvest)"
        )
    if (folder / "source.json").exists():
        return _othello_data(folder)
    if not (folder / "manifest.json").exists():
        raise DataError(
            f"activations={str(path)!r}: holds neither manifest.json (LM cache) nor source.json (OthelloGPT harvest)"
        )
    manifest = verify_cache(str(folder), checksums=False)
    index = read_row_index(str(folder), manifest)
    grid = TokenGrid.from_index(
        index, int(manifest["context"]), (manifest.get("row_index") or {}).get("first_token_id")
    )
    return FeatureData(str(folder), "lm", ActivationStore(folder), grid, manifest, model=model or manifest["model"])


def _othello_data(folder: Path) -> FeatureData:
    from saelab.sources.othello.games import generate_games

    try:
        source = json.loads((folder / "source.json").read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{folder / 'source.json'}: unreadable JSON ({e.msg})") from None
    if source.get("source") != "othello":
        raise DataError(f"{folder / 'source.json'}: source={source.get('source')!r}, expected 'othello'")
    try:
        positions = np.load(folder / "positions.npy").astype(np.int64)
        labels = np.load(folder / "labels.npy", mmap_mode="r")
    except (OSError, ValueError) as e:
        raise DataError(f"{folder}: unreadable positions.npy or labels.npy ({e})") from None
    # The harvest generated its games from (games, seed); regenerating gives the same moves.
    games = generate_games(int(source["games"]), int(source["seed"])).astype(np.int64)
    tokens = np.where(games >= 0, games, UNKNOWN)
    rows = np.full(games.shape, -1, dtype=np.int64)
    rows[positions[:, 0], positions[:, 1]] = np.arange(len(positions))
    grid = TokenGrid(tokens, rows, positions[:, 0].copy(), positions[:, 1].copy(), 0)
    store = ActivationStore(folder)
    if store.n_rows != len(positions) or len(labels) != len(positions):
        raise DataError(f"{folder}: {store.n_rows} activation rows, {len(positions)} positions, {len(labels)} labels")
    return FeatureData(str(folder), "othello", store, grid, source, labels=labels, model=source.get("model", "default"))


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
    """DataError when an LM cache (its manifest `meta`) holds another layer or site than the SAE's `site`.

    Both have the same width, so nothing else would stop the analysis mixing one site's SAE with
    another site's activations; an SAE or cache that names no site is not checked.
    """
    meta = meta or {}
    if site is None or meta.get("site") not in TL_HOOKS or not isinstance(meta.get("layer"), int):
        return
    hook = f"blocks.{meta['layer']}.{TL_HOOKS[meta['site']]}"
    if hook != site.hook_name:
        raise DataError(f"activations={where!r}: holds {hook}, but the SAE was trained on {site.hook_name}")
