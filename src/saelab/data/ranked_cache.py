"""One activation cache written by every torchrun rank at once, holding the rows one process would write.

Batch b of the text goes to rank b mod N, so the batches (and any per-batch statistic, such as the
outlier screen's median) are the ones a single process forms. After each round of N batches the
ranks exchange their (windows, rows) counts, so every rank knows how many rows precede its batch
in text order and takes exactly the rows one process would take: the cache holds the same rows as
a one-process harvest of the same windows, in another order. Shards are written in lock-step:
when any rank has `shard_rows` rows buffered, every rank writes its buffer as a shard of its own
(numbered in rank order) and rank 0 lists them all in the manifest with that round's cursor.

The manifest is the only record of progress, so a killed harvest resumes from the last listed
round with any number of ranks; shards written after it are strays that rank 0 deletes when it
reopens the cache. In one process this is a CacheWriter that flushes every `shard_rows` rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from saelab.data.cache import CacheMeta, CacheWriter
from saelab.util.distributed import World

# The wrapped CacheWriter never flushes by itself: shards are cut here, on every rank in the same round.
_NEVER = 1 << 62


class RankedCacheWriter:
    """Appends one batch per rank per round to one cache until it holds `target_rows` rows or the text ends."""

    def __init__(
        self,
        world: World,
        folder: str,
        meta: CacheMeta,
        target_rows: int,
        shard_rows: int = 65536,
        extra: dict[str, Any] | None = None,
        extend: bool = False,
    ):
        self.world = world
        self.target_rows = target_rows
        self.shard_rows = shard_rows
        owned: list[CacheWriter] = []
        # Rank 0 creates or resumes the cache (and deletes strays) before any other rank opens it.
        world.on_main(lambda: owned.append(CacheWriter(folder, meta, shard_rows=_NEVER, extra=extra, extend=extend)))
        self.writer = owned[0] if owned else CacheWriter(folder, meta, shard_rows=_NEVER, owner=False)
        self.windows = int(self.writer.cursor.get("windows", 0))  # text windows consumed, in text order
        self._buffered = [0] * world.size  # every rank's rows since the last commit, known to all from the counts

    @property
    def manifest(self) -> dict[str, Any]:
        """The cache's manifest as of the last commit (the same on every rank; rank 0 writes it)."""
        return self.writer.manifest

    @property
    def n_rows(self) -> int:
        """Rows in the cache, every rank's buffered rows included."""
        return self.writer.manifest["n_rows"] + sum(self._buffered)

    @property
    def full(self) -> bool:
        """Whether the cache holds its target rows."""
        return self.n_rows >= self.target_rows

    def add(self, windows: int, rows: np.ndarray | None, index: np.ndarray | None = None) -> bool:
        """This rank's batch of the round: its window count, kept rows and their row index (rows None: its text ran out).

        Returns False on every rank once the harvest is over (target reached or text ended).
        """
        counts = self.world.all_gather(None if rows is None else (int(windows), len(rows)))
        ended = False
        for rank, count in enumerate(counts):
            if count is None:  # the text ended before this batch, so before every later one too
                ended = True
                break
            if self.full:  # one process would have stopped before reading this batch
                break
            take = min(count[1], self.target_rows - self.n_rows)
            if rank == self.world.rank:
                self.writer.append(rows[:take], index=None if index is None else index[:take])
            self._buffered[rank] += take
            self.windows += count[0]
        over = ended or self.full
        if over or max(self._buffered) >= self.shard_rows:
            self.commit()
        return not over

    def commit(self) -> None:
        """Every rank writes its buffered rows as a shard; rank 0 lists them all with this round's cursor."""
        number = len(self.writer.manifest["shards"]) + sum(1 for b in self._buffered[: self.world.rank] if b)
        entries = self.world.all_gather(self.writer.write_shard(number))
        self.writer.commit([e for e in entries if e is not None], {"windows": self.windows})
        self._buffered = [0] * self.world.size

    def interrupted(self) -> None:
        """Keep what one process buffered (it resumes exactly); with several ranks the last committed round stands."""
        if not self.world.parallel:  # a peer may be stopped anywhere, even inside a collective: no exchange now
            self.commit()

    def close(self, **fields: Any) -> dict[str, Any]:
        """Commit the last round, then rank 0 marks the cache complete with `fields` added; every rank gets the manifest."""
        self.commit()

        def finish() -> dict[str, Any]:
            self.writer.manifest.update(fields)
            return self.writer.close(complete=True)

        return self.world.on_main(finish)
