"""What makes two activation sources the same data: rows, width, dtype, bytes and a hash of sampled blocks.

A path string says little (a moved run reaches the same file by another path; a regenerated file
sits at the old one), so a checkpoint records this fingerprint and resume compares it. Hashing
every byte of a large cache would take minutes; a fixed set of blocks spread over the bytes, plus
each file's head and tail, catches a different or regenerated file while reading about 2 MiB.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from saelab.data.store import ActivationStore
from saelab.errors import ConfigError, DataError

SAMPLED_BLOCKS = 32
BLOCK_BYTES = 1 << 16
EDGE_BYTES = 4096
COMPARED = ("n_rows", "d_in", "dtype", "bytes", "sample_sha256")


def data_fingerprint(store: ActivationStore) -> dict:
    """{n_rows, d_in, dtype, files, bytes, sample_sha256} of the files behind `store`."""
    paths = [Path(s.path) for s in store.shards]
    try:
        sizes = [os.path.getsize(p) for p in paths]
    except OSError as e:
        raise DataError(f"{e.filename}: cannot read ({e.strerror})") from None
    total = sum(sizes)
    digest = hashlib.sha256()
    # Global offsets of the sampled blocks, evenly spread over the concatenated files.
    span = max(total - BLOCK_BYTES, 0)
    wanted = sorted({span * i // max(SAMPLED_BLOCKS - 1, 1) for i in range(SAMPLED_BLOCKS)})
    start = 0
    for path, size in zip(paths, sizes):
        digest.update(f"{size}\n".encode())
        try:
            with open(path, "rb") as f:
                digest.update(f.read(EDGE_BYTES))
                f.seek(max(size - EDGE_BYTES, 0))
                digest.update(f.read(EDGE_BYTES))
                for offset in wanted:
                    if start <= offset < start + size:
                        f.seek(offset - start)
                        digest.update(f.read(BLOCK_BYTES))
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror})") from None
        start += size
    return {"n_rows": int(store.n_rows), "d_in": int(store.d_in), "dtype": str(store.dtype), "files": len(paths),
            "bytes": total, "sample_sha256": digest.hexdigest()}


def check_same_data(field: str, path: str, saved: dict | None, now: dict) -> None:
    """ConfigError naming `field` unless `now` is the fingerprint `saved` in the checkpoint."""
    if not isinstance(saved, dict):
        raise ConfigError(field, path, "the checkpoint records no fingerprint of its data, so resume cannot check it is the same data")
    for key in COMPARED:
        if saved.get(key) != now.get(key):
            what = "content differs" if key == "sample_sha256" else f"{key} is {now.get(key)!r}, the checkpoint's data had {saved.get(key)!r}"
            raise ConfigError(field, path, f"not the data the checkpoint was trained on ({what})")
