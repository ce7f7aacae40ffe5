"""Activation cache on disk: .npy shards plus a manifest, written atomically and resumable."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from saelab.errors import DataError, SaelabError
from saelab.io import TEMP_PREFIX, atomic_write, atomic_write_bytes

CACHE_FORMAT = "saelab-activation-cache/1"
MANIFEST = "manifest.json"
CACHE_DTYPES = ("float32", "float16")
# Manifest keys that must agree for a harvest to resume into an existing cache.
_IDENTITY_KEYS = ("model", "site", "layer", "dtype", "d_in", "context", "tokenizer", "text_source", "options")


@dataclass(frozen=True)
class CacheMeta:
    """What a cache holds: which model, site and text produced its rows."""

    model: str
    site: str
    layer: int
    dtype: str
    d_in: int
    context: int
    tokenizer: str
    text_source: str
    options: dict[str, Any] = field(default_factory=dict)  # harvest options that shape the rows


def shard_name(index: int) -> str:
    """File name of shard number `index`."""
    return f"shard-{index:05d}.npy"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: str, manifest: dict[str, Any]) -> None:
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    atomic_write_bytes(os.path.join(folder, MANIFEST), data)


def read_manifest(folder: str) -> dict[str, Any]:
    """Parse and sanity-check a cache's manifest.json (no shard checks)."""
    path = os.path.join(folder, MANIFEST)
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError as exc:
        raise DataError(f"{folder}: no {MANIFEST} (not an activation cache)") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(f"{path}: format={got!r}, expected {CACHE_FORMAT!r}")
    missing = [k for k in (*_IDENTITY_KEYS[:-1], "n_rows", "shards", "complete") if k not in manifest]
    if missing:
        raise DataError(f"{path}: manifest lacks keys {', '.join(missing)}")
    return manifest


def verify_cache(folder: str, checksums: bool = True, allow_incomplete: bool = False) -> dict[str, Any]:
    """Check every shard's existence, shape, dtype and (by default) sha256; return the manifest."""
    manifest = read_manifest(folder)
    if not manifest["complete"] and not allow_incomplete:
        raise DataError(
            f"{folder}: incomplete activation cache ({manifest['n_rows']} rows so far); "
            "rerun the same `saelab lm activations` command to finish it"
        )
    total = 0
    for entry in manifest["shards"]:
        path = os.path.join(folder, entry["file"])
        try:
            arr = np.load(path, mmap_mode="r")
        except FileNotFoundError as exc:
            raise DataError(f"{path}: shard listed in the manifest is missing") from exc
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable shard ({exc})") from exc
        shape = tuple(arr.shape)
        if shape != (entry["rows"], manifest["d_in"]):
            raise DataError(f"{path}: shape {shape}, manifest says ({entry['rows']}, {manifest['d_in']})")
        if arr.dtype != np.dtype(manifest["dtype"]):
            raise DataError(f"{path}: dtype {arr.dtype}, manifest says {manifest['dtype']}")
        del arr
        if checksums and _sha256(path) != entry["sha256"]:
            raise DataError(f"{path}: sha256 checksum does not match the manifest (file changed or corrupt)")
        total += entry["rows"]
    if total != manifest["n_rows"]:
        raise DataError(f"{folder}: shards hold {total} rows, manifest n_rows={manifest['n_rows']}")
    return manifest


def check_out_folder(folder: str, extend: bool = False) -> dict[str, Any] | None:
    """Refuse a folder a harvest must not write into; return its manifest when it is a cache to resume or extend."""
    if os.path.exists(os.path.join(folder, MANIFEST)):
        manifest = read_manifest(folder)
        if manifest["complete"] and not extend:
            raise SaelabError(
                f"out={folder!r}: already holds a complete activation cache; choose another folder "
                "(or pass --extend to append more rows to it)"
            )
        return manifest
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise SaelabError(f"out={folder!r}: exists and is not a folder")
    if os.path.isdir(folder) and any(not n.startswith(TEMP_PREFIX) for n in os.listdir(folder)):
        raise SaelabError(f"out={folder!r}: folder is not empty and holds no activation cache")
    return None


class CacheWriter:
    """Appends activation rows to a cache folder; resumes an incomplete cache (or extends a complete one) of the same identity."""

    def __init__(
        self,
        folder: str,
        meta: CacheMeta,
        shard_rows: int = 65536,
        extra: dict[str, Any] | None = None,
        extend: bool = False,
    ):
        if meta.dtype not in CACHE_DTYPES:
            raise SaelabError(f"dtype={meta.dtype!r}: cache dtype must be one of {', '.join(CACHE_DTYPES)}")
        self.folder = folder
        self.meta = meta
        self.shard_rows = shard_rows
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._cursor: dict[str, Any] = {}
        if check_out_folder(folder, extend=extend) is not None:
            self.manifest = self._resume()
        else:
            os.makedirs(folder, exist_ok=True)
            self.manifest = {"format": CACHE_FORMAT, **asdict(meta), "n_rows": 0, "shards": [], "complete": False}
            self.manifest.update(extra or {})
            _write_manifest(folder, self.manifest)
        self._clean_strays()

    def _resume(self) -> dict[str, Any]:
        manifest = verify_cache(self.folder, allow_incomplete=True)
        for key, value in asdict(self.meta).items():
            if manifest.get(key, {} if key == "options" else None) != value:
                raise SaelabError(
                    f"out={self.folder!r}: cannot resume, the cache has {key}={manifest[key]!r}, this run {value!r}"
                )
        if manifest["complete"]:
            # Existing shards stay untouched; until close() the cache reads as incomplete, so an
            # interrupted extension is resumed like any interrupted harvest.
            manifest["complete"] = False
            _write_manifest(self.folder, manifest)
        return manifest

    def _clean_strays(self) -> None:
        # Temp files and shards not in the manifest come from an interrupted write: drop them.
        listed = {e["file"] for e in self.manifest["shards"]}
        for name in os.listdir(self.folder):
            if name.startswith(TEMP_PREFIX) or (name.startswith("shard-") and name not in listed):
                os.unlink(os.path.join(self.folder, name))

    @property
    def n_rows(self) -> int:
        """Rows on disk plus rows buffered."""
        return self.manifest["n_rows"] + self._buffered

    @property
    def cursor(self) -> dict[str, Any]:
        """Caller's position record saved with the last flushed shard (e.g. windows consumed)."""
        return dict(self.manifest.get("cursor", {}))

    def append(self, rows: np.ndarray, cursor: dict[str, Any] | None = None) -> None:
        """Buffer rows [n, d_in]; `cursor` is where the caller stands after them, saved when they are flushed."""
        if rows.ndim != 2 or rows.shape[1] != self.meta.d_in:
            raise ValueError(f"rows of shape {rows.shape}, expected (n, {self.meta.d_in})")
        if len(rows):
            self._buffer.append(np.ascontiguousarray(rows, dtype=self.meta.dtype))
            self._buffered += len(rows)
        if cursor is not None:
            self._cursor = dict(cursor)
        if self._buffered >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one shard and rewrite the manifest."""
        if not self._buffered:
            return
        data = np.concatenate(self._buffer)
        index = len(self.manifest["shards"])
        name = shard_name(index)
        path = os.path.join(self.folder, name)
        atomic_write(path, lambda fh: np.save(fh, data, allow_pickle=False))
        self.manifest["shards"].append({"file": name, "rows": int(len(data)), "sha256": _sha256(path)})
        self.manifest["n_rows"] += int(len(data))
        self.manifest["cursor"] = self._cursor
        _write_manifest(self.folder, self.manifest)
        self._buffer, self._buffered = [], 0

    def close(self, complete: bool = True) -> dict[str, Any]:
        """Flush and mark the cache complete; returns the final manifest."""
        self.flush()
        self.manifest["complete"] = bool(complete)
        _write_manifest(self.folder, self.manifest)
        return self.manifest
