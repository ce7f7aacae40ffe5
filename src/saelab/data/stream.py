"""A deterministic shuffled stream of batches with bounded memory, resumable at any batch."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from saelab.data.store import ActivationStore
from saelab.errors import ConfigError

BLOCK_ROWS = 1024


@dataclass
class _Buffer:
    rows: np.ndarray  # global row indices, in shuffled order
    data: np.ndarray | None = None


class BatchStream:
    """Batches of `batch_size` rows from [lo, hi), reshuffled every epoch, resumable by position.

    Each epoch permutes blocks of BLOCK_ROWS contiguous rows, groups consecutive blocks into
    buffers of about `buffer_rows` rows, and permutes rows within each buffer. Only one buffer is
    held in memory (of an in-memory store, only its row order: each batch reads its own rows), so
    memory stays bounded for stores larger than RAM; when the whole range fits in one buffer the
    shuffle is a uniform permutation. The order depends only on (seed, epoch),
    so batch `position` can be produced without replaying earlier batches. The last partial batch
    of an epoch is dropped.
    """

    def __init__(
        self, store: ActivationStore, row_range: tuple[int, int], batch_size: int, seed: int, buffer_rows: int
    ):
        self.store = store
        self.lo, self.hi = row_range
        self.batch_size = batch_size
        self.seed = seed
        n = self.hi - self.lo
        if n < batch_size:
            raise ConfigError("batch_size", batch_size, f"larger than the {n} training rows")
        self.steps_per_epoch = n // batch_size
        blocks_per_buffer = max(1, -(-max(buffer_rows, batch_size) // BLOCK_ROWS))
        self.blocks_per_buffer = blocks_per_buffer
        self.n_blocks = -(-n // BLOCK_ROWS)
        self._epoch_cache: tuple[int, list[int], list[np.ndarray]] | None = None
        self._buffer_cache: tuple[int, int, _Buffer] | None = None

    def _epoch_layout(self, epoch: int) -> tuple[list[int], list[np.ndarray]]:
        """Buffer start offsets in the epoch's order and each buffer's block list."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1], self._epoch_cache[2]
        rng = np.random.default_rng([self.seed, epoch])
        block_order = rng.permutation(self.n_blocks)
        groups = [block_order[i : i + self.blocks_per_buffer] for i in range(0, self.n_blocks, self.blocks_per_buffer)]
        starts, offset = [], 0
        for g in groups:
            starts.append(offset)
            offset += sum(self._block_len(b) for b in g)
        self._epoch_cache = (epoch, starts, groups)
        return starts, groups

    def order_hash(self) -> str:
        """First 16 hex digits of a SHA-256 of epoch 0's order (its block order and the first buffer's row order); reads no data."""
        _, groups = self._epoch_layout(0)
        n_rows = sum(self._block_len(b) for b in groups[0])
        perm = np.random.default_rng([self.seed, 0, 0, 1]).permutation(n_rows)  # as _buffer draws it
        digest = hashlib.sha256(np.concatenate(groups).astype(np.int64).tobytes())
        digest.update(perm.astype(np.int64).tobytes())
        return digest.hexdigest()[:16]

    def _block_len(self, block: int) -> int:
        return min(BLOCK_ROWS, self.hi - self.lo - block * BLOCK_ROWS)

    def _buffer(self, epoch: int, index: int) -> _Buffer:
        if self._buffer_cache is not None and self._buffer_cache[:2] == (epoch, index):
            return self._buffer_cache[2]
        _, groups = self._epoch_layout(epoch)
        blocks = np.sort(groups[index])
        rows = np.concatenate([self.lo + b * BLOCK_ROWS + np.arange(self._block_len(b)) for b in blocks])
        perm = np.random.default_rng([self.seed, epoch, index, 1]).permutation(len(rows))
        if self.store.in_memory:
            # Rows already in RAM are read per batch: no float32 copy of a buffer (of a whole bf16 tensor) is held.
            buf = _Buffer(rows=rows[perm])
        else:
            data = self.store.read(rows)  # sorted rows: sequential reads from the memory map
            buf = _Buffer(rows=rows[perm], data=data[perm])
        self._buffer_cache = (epoch, index, buf)
        return buf

    def batch(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """(float32 batch [B, d_in], its global row indices) for global batch number `position`."""
        epoch, i = divmod(position, self.steps_per_epoch)
        starts, _ = self._epoch_layout(epoch)
        lo = i * self.batch_size
        hi = lo + self.batch_size
        parts, rows = [], []
        b = int(np.searchsorted(starts, lo, side="right") - 1)
        while lo < hi:
            buf = self._buffer(epoch, b)
            begin = lo - starts[b]
            take = min(hi - lo, len(buf.rows) - begin)
            picked = buf.rows[begin : begin + take]
            parts.append(self.store.read(picked) if buf.data is None else buf.data[begin : begin + take])
            rows.append(picked)
            lo += take
            b += 1
        return np.concatenate(parts), np.concatenate(rows)
