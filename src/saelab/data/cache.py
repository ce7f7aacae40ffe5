"""Activation cache on disk: .npy shards plus a manifest, written atomically and resumable."""

from __future__ import annotations

import hashlib
import json
import os
import tokenize
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from saelab.errors import DataError, SaelabError
from saelab.util.atomic import TEMP_PREFIX, atomic_write, atomic_write_bytes

# What np.load raises on a damaged .npy: its header parser lets tokenizer and syntax errors through.
NPY_LOAD_ERRORS = (OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError)
CACHE_FORMAT = "saelab-activation-cache/1"
MANIFEST = "manifest.json"
CACHE_DTYPES = ("float32", "float16")
# Row-aligned int32 companion of every shard: which token, text window and position each row is.
INDEX_COLUMNS = ("token", "window", "position")
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


def index_name(index: int) -> str:
    """File name of the row index (token, window, position) of shard number `index`."""
    return f"index-{index:05d}.npy"


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
    except (OSError, ValueError, RecursionError) as exc:  # also not UTF-8, or nested beyond reason
        raise DataError(f"{path}: unreadable manifest ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(f"{path}: format={got!r}, expected {CACHE_FORMAT!r}")
    missing = [k for k in (*_IDENTITY_KEYS[:-1], "n_rows", "shards", "complete") if k not in manifest]
    if missing:
        raise DataError(f"{path}: manifest lacks keys {', '.join(missing)}")
    _check_manifest_types(path, folder, manifest)
    return manifest


# The type every manifest key must have; a hand-edited or foreign manifest is refused, not half-read.
_MANIFEST_TYPES = {
    "model": str,
    "site": str,
    "layer": int,
    "dtype": str,
    "d_in": int,
    "context": int,
    "tokenizer": str,
    "text_source": str,
    "options": dict,
    "n_rows": int,
    "complete": bool,
    "shards": list,
    "cursor": dict,
}
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", dict: "an object", list: "a list"}


def _typed(value, typ) -> bool:
    return isinstance(value, typ) and (typ is not int or not isinstance(value, bool))


def contained(folder: str, name, where: str) -> str:
    """`folder/name` when `name` is a relative path that stays inside `folder` (no `..`, not absolute, no link out)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise DataError(f"{where}: file name {name!r} is not a usable relative path")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts:
        raise DataError(f"{where}: file {name!r} points outside {folder} (absolute paths and '..' are refused)")
    path = os.path.join(folder, name)
    root = os.path.realpath(folder)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise DataError(f"{where}: file {name!r} links outside {folder}")
    return path


def _check_manifest_types(path: str, folder: str, manifest: dict[str, Any]) -> None:
    for key, typ in _MANIFEST_TYPES.items():
        if key in manifest and not _typed(manifest[key], typ):
            raise DataError(f"{path}: {key}={manifest[key]!r} must be {_TYPE_NAMES[typ]}")
    if manifest["dtype"] not in CACHE_DTYPES:
        raise DataError(f"{path}: dtype={manifest['dtype']!r} must be one of {', '.join(CACHE_DTYPES)}")
    if manifest["d_in"] < 1 or manifest["n_rows"] < 0:
        raise DataError(f"{path}: d_in={manifest['d_in']} and n_rows={manifest['n_rows']} must be ≥ 1 and ≥ 0")
    for i, entry in enumerate(manifest["shards"]):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: shards[{i}] must be an object with file, rows and sha256")
        for key, typ in (("file", str), ("rows", int), ("sha256", str)) + (
            (("index_file", str), ("index_sha256", str)) if "index_file" in entry else ()
        ):
            if not _typed(entry.get(key), typ):
                raise DataError(f"{path}: shards[{i}].{key}={entry.get(key)!r} must be {_TYPE_NAMES[typ]}")
        if entry["rows"] < 0:
            raise DataError(f"{path}: shards[{i}].rows={entry['rows']} must be ≥ 0")
        contained(folder, entry["file"], f"{path}: shards[{i}]")
        if "index_file" in entry:
            contained(folder, entry["index_file"], f"{path}: shards[{i}]")


def verify_cache(folder: str, checksums: bool = True, allow_incomplete: bool = False) -> dict[str, Any]:
    """Check every shard's existence, shape, dtype and (by default) sha256; return the manifest."""
    manifest = read_manifest(folder)
    if not manifest["complete"] and not allow_incomplete:
        raise DataError(
            f"{folder}: incomplete activation cache ({manifest['n_rows']} rows so far); "
            "rerun the same `saelab lm activations` command to finish it"
        )
    if manifest["complete"] and not manifest["shards"]:
        raise DataError(f"{os.path.join(folder, MANIFEST)}: a complete cache that lists no shards")
    total = 0
    for entry in manifest["shards"]:
        path = contained(folder, entry["file"], os.path.join(folder, MANIFEST))
        try:
            arr = np.load(path, mmap_mode="r")
        except FileNotFoundError as exc:
            raise DataError(f"{path}: shard listed in the manifest is missing") from exc
        except NPY_LOAD_ERRORS as exc:
            raise DataError(f"{path}: unreadable shard ({exc or type(exc).__name__})") from None
        shape = tuple(arr.shape)
        if shape != (entry["rows"], manifest["d_in"]):
            raise DataError(f"{path}: shape {shape}, manifest says ({entry['rows']}, {manifest['d_in']})")
        if arr.dtype != np.dtype(manifest["dtype"]):
            raise DataError(f"{path}: dtype {arr.dtype}, manifest says {manifest['dtype']}")
        del arr
        if checksums and _sha256(path) != entry["sha256"]:
            raise DataError(f"{path}: sha256 checksum does not match the manifest (file changed or corrupt)")
        if "index_file" in entry:
            _verify_index(folder, entry, checksums)
        total += entry["rows"]
    if total != manifest["n_rows"]:
        raise DataError(f"{folder}: shards hold {total} rows, manifest n_rows={manifest['n_rows']}")
    return manifest


def _verify_index(folder: str, entry: dict[str, Any], checksums: bool) -> None:
    """A shard's row index must exist, be int32 [rows, 3] and match its checksum."""
    path = contained(folder, entry["index_file"], os.path.join(folder, MANIFEST))
    try:
        arr = np.load(path, mmap_mode="r")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: row index listed in the manifest is missing") from exc
    except NPY_LOAD_ERRORS as exc:
        raise DataError(f"{path}: unreadable row index ({exc or type(exc).__name__})") from None
    if tuple(arr.shape) != (entry["rows"], len(INDEX_COLUMNS)) or arr.dtype != np.int32:
        raise DataError(f"{path}: row index is {arr.dtype} {tuple(arr.shape)}, expected int32 ({entry['rows']}, 3)")
    del arr
    if checksums and _sha256(path) != entry["index_sha256"]:
        raise DataError(f"{path}: sha256 checksum does not match the manifest (file changed or corrupt)")


def read_row_index(folder: str, manifest: dict[str, Any] | None = None) -> np.ndarray:
    """The int32 [n_rows, 3] (token, window, position) of every row; DataError for caches written without it."""
    manifest = manifest if manifest is not None else verify_cache(folder)
    shards = manifest["shards"]
    if "row_index" not in manifest or any("index_file" not in e for e in shards):
        raise DataError(
            f"activations={folder!r}: this cache has no token/window/position index (written by an older saelab); "
            "rebuild it with the same `saelab lm activations` command into a new --out folder"
        )
    if not shards:
        return np.zeros((0, len(INDEX_COLUMNS)), dtype=np.int32)
    return np.concatenate([np.load(os.path.join(folder, e["index_file"]), mmap_mode="r") for e in shards])


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
        owner: bool = True,
    ):
        if meta.dtype not in CACHE_DTYPES:
            raise SaelabError(f"dtype={meta.dtype!r}: cache dtype must be one of {', '.join(CACHE_DTYPES)}")
        self.folder = folder
        self.meta = meta
        self.shard_rows = shard_rows
        self._buffer: list[np.ndarray] = []
        self._index: list[np.ndarray] = []
        self._buffered = 0
        self._cursor: dict[str, Any] = {}
        # A writer that is not the owner (a torchrun rank other than 0) writes shards only: the owner
        # created or resumed the cache before it opens, and alone writes manifest.json.
        self.owner = owner
        if not owner:
            self.manifest = read_manifest(folder)
        elif check_out_folder(folder, extend=extend) is not None:
            self.manifest = self._resume()
        else:
            os.makedirs(folder, exist_ok=True)
            self.manifest = {"format": CACHE_FORMAT, **asdict(meta), "n_rows": 0, "shards": [], "complete": False}
            self.manifest.update(extra or {})
            _write_manifest(folder, self.manifest)
        # A cache created with a row index keeps one per shard; an older one being resumed or
        # extended stays without (its readers then say how to rebuild it).
        self.indexed = "row_index" in self.manifest
        if owner:
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
        listed = {e.get(k) for e in self.manifest["shards"] for k in ("file", "index_file")}
        for name in os.listdir(self.folder):
            if name.startswith(TEMP_PREFIX) or (name.startswith(("shard-", "index-")) and name not in listed):
                os.unlink(os.path.join(self.folder, name))

    @property
    def n_rows(self) -> int:
        """Rows on disk plus rows buffered."""
        return self.manifest["n_rows"] + self._buffered

    @property
    def cursor(self) -> dict[str, Any]:
        """Caller's position record saved with the last flushed shard (e.g. windows consumed)."""
        return dict(self.manifest.get("cursor", {}))

    def append(self, rows: np.ndarray, cursor: dict[str, Any] | None = None, index: np.ndarray | None = None) -> None:
        """Buffer rows [n, d_in] (and their [n, 3] token/window/position `index`); `cursor` is saved when they are flushed."""
        if rows.ndim != 2 or rows.shape[1] != self.meta.d_in:
            raise ValueError(f"rows of shape {rows.shape}, expected (n, {self.meta.d_in})")
        if self.indexed:
            if index is None or index.shape != (len(rows), len(INDEX_COLUMNS)):
                got = None if index is None else index.shape
                raise ValueError(
                    f"index of shape {got}, expected ({len(rows)}, {len(INDEX_COLUMNS)}) for this indexed cache"
                )
            if len(rows):
                self._index.append(np.ascontiguousarray(index, dtype=np.int32))
        if len(rows):
            self._buffer.append(np.ascontiguousarray(rows, dtype=self.meta.dtype))
            self._buffered += len(rows)
        if cursor is not None:
            self._cursor = dict(cursor)
        if self._buffered >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one shard and rewrite the manifest."""
        entry = self.write_shard(len(self.manifest["shards"]))
        if entry is not None:
            self.commit([entry], self._cursor)

    @property
    def buffered(self) -> int:
        """Rows appended but not yet in a shard."""
        return self._buffered

    def write_shard(self, index: int) -> dict[str, Any] | None:
        """Write the buffered rows as shard number `index`, leaving the manifest alone; its manifest entry (None if nothing is buffered)."""
        if not self._buffered:
            return None
        data = np.concatenate(self._buffer)
        name = shard_name(index)
        path = os.path.join(self.folder, name)
        atomic_write(path, lambda fh: np.save(fh, data, allow_pickle=False))
        entry = {"file": name, "rows": int(len(data)), "sha256": _sha256(path)}
        if self.indexed:
            index_rows = np.concatenate(self._index)
            index_path = os.path.join(self.folder, index_name(index))
            atomic_write(index_path, lambda fh: np.save(fh, index_rows, allow_pickle=False))
            entry.update(index_file=os.path.basename(index_path), index_sha256=_sha256(index_path))
        self._buffer, self._index, self._buffered = [], [], 0
        return entry

    def commit(self, entries: list[dict[str, Any]], cursor: dict[str, Any]) -> None:
        """List written shards (in row order) with the cursor they reach; only the owner rewrites manifest.json."""
        self.manifest["shards"].extend(entries)
        self.manifest["n_rows"] += sum(int(e["rows"]) for e in entries)
        self.manifest["cursor"] = dict(cursor)
        if self.owner:
            _write_manifest(self.folder, self.manifest)

    def close(self, complete: bool = True) -> dict[str, Any]:
        """Flush and mark the cache complete; returns the final manifest."""
        if not self.owner:
            raise SaelabError(f"out={self.folder!r}: only the owning writer (rank 0) closes the cache")
        self.flush()
        self.manifest["complete"] = bool(complete)
        _write_manifest(self.folder, self.manifest)
        return self.manifest
