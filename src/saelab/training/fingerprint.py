"""What makes two activation sources the same data: rows, width, dtype, bytes and a SHA-256 of every byte.

A path string says little (a moved run reaches the same file by another path; a regenerated file
sits at the old one), so a checkpoint (and a sweep's sweep.json) records this fingerprint and
resume compares it. The hash covers every byte of every file: a hash of sampled blocks missed
an edit of 300 rows between two blocks (issue 35). Each file's digest is cached in the user's
cache folder (SAELAB_CACHE_DIR, else $XDG_CACHE_HOME/saelab, else ~/.cache/saelab; never beside the
data, which saelab does not write), keyed by the file's real path, size, inode, mtime and ctime:
any write to the file changes its ctime, so a stale digest is never used. Hashing runs at the
disk's or SHA-256's speed (docs/guide/reliability.md gives the measured cost per GB); later runs
on the same unchanged file read one small JSON file. The sampled-block hash is kept too, so
checkpoints written before the full hash still resume (compared on what they recorded).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from saelab.data.store import ActivationStore
from saelab.errors import ConfigError, DataError
from saelab.util.atomic import atomic_write_json
from saelab.util.cache_dir import cache_dir

SAMPLED_BLOCKS = 32
BLOCK_BYTES = 1 << 16
EDGE_BYTES = 4096
COMPARED = ("n_rows", "d_in", "dtype", "bytes", "sha256")
HASH_CHUNK = 1 << 22


def file_sha256(path: str | Path) -> str:
    """SHA-256 of every byte of `path`, from the digest cache when the file is unchanged since it was hashed."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = f"{real}|{st.st_size}|{st.st_dev}|{st.st_ino}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    entry = cache_dir() / "digests" / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
    try:
        cached = json.loads(entry.read_text())
        if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("sha256"), str):
            return cached["sha256"]
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(real, "rb") as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    value = digest.hexdigest()
    try:
        atomic_write_json(entry, {"key": key, "sha256": value})
    except OSError:
        pass  # a read-only home: the digest is recomputed next time, nothing else changes
    return value


def _memory_fingerprint(store: ActivationStore) -> dict:
    """The fingerprint of an in-memory store: a SHA-256 of its rows as float32, read a chunk at a time."""
    digest = hashlib.sha256()
    chunk = max(1, HASH_CHUNK // (4 * store.d_in))
    for lo in range(0, store.n_rows, chunk):
        digest.update(store.read_range(lo, min(lo + chunk, store.n_rows)).tobytes())
    return {
        "n_rows": int(store.n_rows),
        "d_in": int(store.d_in),
        "dtype": str(store.dtype),
        "files": 0,
        "bytes": 4 * store.n_rows * store.d_in,
        "sample_sha256": digest.hexdigest(),
        "sha256": digest.hexdigest(),
    }


def data_fingerprint(store: ActivationStore) -> dict:
    """{n_rows, d_in, dtype, files, bytes, sample_sha256} of the files behind `store` (or of its rows, in memory)."""
    if store.in_memory:
        return _memory_fingerprint(store)
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
    whole = hashlib.sha256()
    for path, size in zip(paths, sizes):
        try:
            whole.update(f"{size}:{file_sha256(path)}\n".encode())
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror})") from None
    return {
        "n_rows": int(store.n_rows),
        "d_in": int(store.d_in),
        "dtype": str(store.dtype),
        "files": len(paths),
        "bytes": total,
        "sample_sha256": digest.hexdigest(),
        "sha256": whole.hexdigest(),
    }


def check_same_data(field: str, path: str, saved: dict | None, now: dict) -> None:
    """ConfigError naming `field` unless `now` is the fingerprint `saved` in the checkpoint."""
    if not isinstance(saved, dict):
        raise ConfigError(
            field, path, "the checkpoint records no fingerprint of its data, so resume cannot check it is the same data"
        )
    # A fingerprint written before the full hash is compared on its sampled blocks, all it recorded.
    keys = COMPARED if "sha256" in saved else (*COMPARED[:-1], "sample_sha256")
    for key in keys:
        if saved.get(key) != now.get(key):
            what = (
                "content differs"
                if key.endswith("sha256")
                else f"{key} is {now.get(key)!r}, the checkpoint's data had {saved.get(key)!r}"
            )
            raise ConfigError(field, path, f"not the data the checkpoint was trained on ({what})")
