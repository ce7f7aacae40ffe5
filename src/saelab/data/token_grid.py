"""Token ids and cached row numbers of every (window, position) of a set of activations: how rows map back to text."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saelab.errors import DataError

UNKNOWN = -1  # token id where a grid position has no known token


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
