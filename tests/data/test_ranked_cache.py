"""RankedCacheWriter: 2 gloo ranks writing one cache hold the one-process writer's rows, cursor and row count.

Synthetic batches of uneven size (as an outlier screen leaves them) stand in for the LM, so the
lock-step bookkeeping is tested in seconds; tests/sources/lm/test_distributed_harvest.py runs the real
harvest under torchrun (slow).
"""

from __future__ import annotations

import itertools
import json
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp
from cli_harness import free_port

from saelab.data.cache import CacheMeta, read_row_index, verify_cache
from saelab.data.ranked_cache import RankedCacheWriter
from saelab.util.distributed import World

META = CacheMeta(
    model="m", site="resid_post", layer=0, dtype="float32", d_in=4, context=3, tokenizer="t", text_source="x"
)
EXTRA = {"row_index": {"columns": ["token", "window", "position"]}}
N_BATCHES, WINDOWS = 11, 2  # an odd count: in the last round rank 1's text has run out
# Targets: mid-batch; never reached (the text ends); exactly the first two rounds (a resumable state).
MID, ALL = 60, 10**6


def _batch(b: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch b: 2..12 rows, each row's values and index naming (batch, row)."""
    n = 2 + (5 * b) % 11
    rows = np.arange(n, dtype=np.float32)[:, None] / 100 + np.full((n, 4), b, np.float32)
    index = np.stack([np.zeros(n), np.full(n, b * WINDOWS), np.arange(n)], axis=1).astype(np.int32)
    return rows, index


TWO_ROUNDS = sum(len(_batch(b)[0]) for b in range(4))


def _write(world: World, folder: Path, target: int) -> dict:
    """What the harvest loop does: batch b on rank b mod N, None once this rank's text has run out."""
    writer = RankedCacheWriter(world, str(folder), META, target, shard_rows=8, extra=EXTRA)
    skip = writer.windows // WINDOWS
    mine = range(skip + world.rank, N_BATCHES, world.size)
    for b in itertools.chain(mine, itertools.repeat(None)):
        if writer.full:
            break
        rows, index = _batch(b) if b is not None else (None, None)
        if not writer.add(0 if b is None else WINDOWS, rows, index):
            break
    return writer.close(exhausted=writer.n_rows < target)


def _rank(rank: int, port: int, root: str) -> None:
    # A bounded timeout: a rank that died must fail the test, not leave its peer waiting for 30 minutes.
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=120)
    )
    world, root = World(rank, 2), Path(root)
    try:
        _write(world, root / "mid", MID)
        _write(world, root / "all", ALL)
        _write(world, root / "part", TWO_ROUNDS)
        if world.is_main:  # as a kill after the second round's commit leaves it, with a shard written after it
            path = root / "part" / "manifest.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "complete": False}))
            np.save(root / "part" / "shard-00099.npy", np.zeros((3, 4), np.float32))
            shutil.copytree(root / "part", root / "part-one")
        world.barrier()
        _write(world, root / "part", MID)
    finally:
        dist.destroy_process_group()


def _sorted(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    manifest = verify_cache(str(folder))
    index = read_row_index(str(folder), manifest)
    rows = np.concatenate([np.load(folder / s["file"]) for s in manifest["shards"]])
    order = np.lexsort((index[:, 2], index[:, 1]))
    return index[order], rows[order]


def _assert_same(got: Path, want: Path) -> None:
    (gi, gr), (wi, wr) = _sorted(got), _sorted(want)
    np.testing.assert_array_equal(gi, wi)
    np.testing.assert_array_equal(gr, wr)
    g, w = verify_cache(str(got)), verify_cache(str(want))
    assert (g["n_rows"], g["cursor"], g["exhausted"]) == (w["n_rows"], w["cursor"], w["exhausted"])


def test_two_ranks_write_the_one_process_cache(tmp_path):
    port = free_port()
    # Rank 0 is this process (torch is imported already), rank 1 one spawned child.
    child = mp.get_context("spawn").Process(target=_rank, args=(1, port, str(tmp_path / "two")))
    child.start()
    try:
        _rank(0, port, str(tmp_path / "two"))
    finally:
        child.join(timeout=120)
    assert child.exitcode == 0
    one = tmp_path / "one"
    for name, target in (("mid", MID), ("all", ALL), ("part", MID)):
        _write(World(), one / name, target)
    for name in ("mid", "all", "part"):
        _assert_same(tmp_path / "two" / name, one / name)
    two = tmp_path / "two"
    assert verify_cache(str(two / "mid"))["n_rows"] == MID and verify_cache(str(two / "all"))["exhausted"]
    # Shards numbered densely across ranks, the stray deleted on resume, no other file left behind.
    for name in ("mid", "all", "part"):
        shards = verify_cache(str(two / name))["shards"]
        assert [s["file"] for s in shards] == [f"shard-{i:05d}.npy" for i in range(len(shards))]
        assert len(list((two / name).iterdir())) == 1 + 2 * len(shards)
    # A 2-rank cache resumes in one process, to the same rows.
    _write(World(), two / "part-one", MID)
    _assert_same(two / "part-one", one / "part")
