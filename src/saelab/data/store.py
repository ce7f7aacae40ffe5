"""Read-only, memory-mapped access to activations [N, d_in] in .npy, .safetensors or shard folders."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saelab.data.cache import NPY_LOAD_ERRORS, contained, verify_cache
from saelab.data.tensor_rows import TensorRows, rows_of_tensor
from saelab.errors import DataError

DTYPES = {"F32": np.float32, "F16": np.float16}
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors format's own limit
SUPPORTED = (np.dtype(np.float32), np.dtype(np.float16))


@dataclass
class Shard:
    """One file's rows, memory-mapped."""

    path: Path
    array: np.ndarray  # [rows, d_in], memory-mapped
    start: int  # first global row index


def _open_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except NPY_LOAD_ERRORS as e:
        raise DataError(f"{path}: unreadable .npy ({e})") from None


def _read_safetensors_header(path: Path) -> tuple[int, dict]:
    """(header length, header) of a safetensors file, with every entry checked against the file's size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                raise DataError(
                    f"{path}: malformed .safetensors header (declares {header_len} header bytes in a {size}-byte file)"
                )
            header = json.loads(f.read(header_len))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"{path}: unreadable .safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise DataError(f"{path}: malformed .safetensors header (not a JSON object)")
    data_bytes = size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        ints = lambda v: (
            isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)
        )  # noqa: E731
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("dtype"), str)
            or not ints(shape)
            or not ints(offsets)
            or len(offsets) != 2
        ):
            raise DataError(
                f"{path}: malformed .safetensors header (entry {name!r} lacks a dtype, shape or data_offsets)"
            )
        begin, end = offsets
        if not begin <= end <= data_bytes:
            raise DataError(
                f"{path}: malformed .safetensors header (tensor {name!r} spans bytes {begin}..{end}, the file holds {data_bytes})"
            )
        if (
            info["dtype"] in DTYPES
            and end - begin != int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[info["dtype"]]).itemsize
        ):
            raise DataError(
                f"{path}: malformed .safetensors header (tensor {name!r} has shape {shape} but {end - begin} bytes)"
            )
    return header_len, header


def _open_safetensors(path: Path) -> np.ndarray:
    """Memory-map the single tensor of a safetensors file (or the one named 'activations')."""
    header_len, header = _read_safetensors_header(path)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not tensors:
        raise DataError(f"{path}: holds no tensor")
    if "activations" in tensors:
        name = "activations"
    elif len(tensors) == 1:
        (name,) = tensors
    else:
        raise DataError(f"{path}: holds tensors {sorted(tensors)}; name the activations 'activations'")
    info = tensors[name]
    if info["dtype"] not in DTYPES:
        raise DataError(f"{path}: tensor {name!r} has dtype {info['dtype']}; expected F32 or F16")
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if len(shape) != 2:
        raise DataError(f"{path}: tensor {name!r} has shape {shape}; expected [N, d_in]")
    if 0 in shape:  # nothing to map; the store names the empty side
        return np.zeros(shape, dtype=DTYPES[info["dtype"]])
    return np.memmap(path, dtype=DTYPES[info["dtype"]], mode="r", offset=8 + header_len + begin, shape=shape)


def _open_file(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        arr = _open_npy(path)
    elif path.suffix == ".safetensors":
        arr = _open_safetensors(path)
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .npy, .safetensors or a folder of them)")
    if arr.ndim != 2:
        raise DataError(f"{path}: shape {arr.shape}; expected [N, d_in]")
    if arr.dtype not in SUPPORTED:
        raise DataError(f"{path}: dtype {arr.dtype}; expected float32 or float16")
    return arr


def _shard_paths(folder: Path) -> list[Path]:
    source = folder / "source.json"
    if source.exists():
        # A harvest folder (e.g. OthelloGPT) names its activation file beside labels and positions.
        try:
            info = json.loads(source.read_text())
        except (ValueError, RecursionError, OSError) as e:  # bad JSON, not UTF-8, a folder
            raise DataError(f"{source}: unreadable JSON ({getattr(e, 'msg', type(e).__name__)})") from None
        files = info.get("files") if isinstance(info, dict) else None
        named = files.get("activations") if isinstance(files, dict) else None
        if named:
            return [Path(contained(str(folder), named, str(source)))]
    if (folder / "manifest.json").exists():
        manifest = verify_cache(folder)
        return [folder / s["file"] for s in manifest["shards"]]
    # The rule source.json and manifests follow: a shard that links outside the folder is refused.
    paths = sorted(
        Path(contained(str(folder), p.name, str(folder / p.name)))
        for p in folder.iterdir()
        if p.suffix in (".npy", ".safetensors") and not p.name.startswith(".")
    )
    if not paths:
        raise DataError(f"{folder}: folder holds no .npy or .safetensors shard")
    return paths


class ActivationStore:
    """Rows of one or more memory-mapped files seen as a single [N, d_in] array."""

    in_memory = False  # from_array: no file behind it; a batch stream reads its rows per batch, holding no buffer

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"activations={str(self.path)!r}: no such file or folder")
        paths = _shard_paths(self.path) if self.path.is_dir() else [self.path]
        self.shards: list[Shard] = []
        start = 0
        d_in = None
        for p in paths:
            arr = _open_file(p)
            if arr.shape[1] == 0:
                raise DataError(f"{p}: has zero columns (d_in = 0)")
            if d_in is None:
                d_in = arr.shape[1]
            elif arr.shape[1] != d_in:
                raise DataError(f"{p}: d_in is {arr.shape[1]} but earlier shards have {d_in}")
            self.shards.append(Shard(p, arr, start))
            start += arr.shape[0]
        self.n_rows = start
        self.d_in = int(d_in)
        if self.n_rows == 0:
            raise DataError(f"activations={str(self.path)!r}: holds no rows (empty input)")
        self._starts = np.array([s.start for s in self.shards], dtype=np.int64)

    @classmethod
    def from_array(cls, array, name: str = "<array>") -> "ActivationStore":
        """A store over an in-memory [N, d_in] array or tensor, never copied whole; same checks as a file.

        float32 and float16 are read in place (a tensor through its numpy view), bfloat16 through
        TensorRows; each read widens only the rows it returns. Other float dtypes (float64) are
        converted to float32 once, up front. A tensor on an accelerator is first copied to the CPU.
        """
        arr = rows_of_tensor(array.detach().cpu()) if hasattr(array, "detach") else np.asarray(array)
        if arr.ndim != 2:
            raise DataError(f"activations={name}: shape {tuple(arr.shape)}; expected [N, d_in]")
        if arr.shape[0] == 0:
            raise DataError(f"activations={name}: holds no rows (empty input)")
        if arr.shape[1] == 0:
            raise DataError(f"activations={name}: has zero columns (d_in = 0)")
        if not isinstance(arr, TensorRows) and arr.dtype not in SUPPORTED:
            if not np.issubdtype(arr.dtype, np.floating):
                raise DataError(f"activations={name}: dtype {arr.dtype}; expected floating point")
            arr = arr.astype(np.float32)
        store = cls.__new__(cls)
        store.path = Path(name)
        store.in_memory = True
        store.shards = [Shard(Path(name), arr, 0)]
        store.n_rows, store.d_in = int(arr.shape[0]), int(arr.shape[1])
        store._starts = np.zeros(1, dtype=np.int64)
        return store

    @property
    def dtype(self) -> np.dtype:
        """Storage dtype of the first shard."""
        return self.shards[0].array.dtype

    def locate(self, row: int) -> tuple[Path, int]:
        """(file, row within that file) of a global row index."""
        i = int(np.searchsorted(self._starts, row, side="right") - 1)
        return self.shards[i].path, row - self.shards[i].start

    def read(self, rows: np.ndarray) -> np.ndarray:
        """float32 copy of the given global rows, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.d_in), dtype=np.float32)
        if len(rows) == 0:
            return out
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        shard_of = np.searchsorted(self._starts, sorted_rows, side="right") - 1
        for i in np.unique(shard_of):
            sel = shard_of == i
            local = sorted_rows[sel] - self.shards[i].start
            out[order[sel]] = self.shards[i].array[local]
        return out

    def read_range(self, lo: int, hi: int) -> np.ndarray:
        """float32 copy of the contiguous rows [lo, hi)."""
        return self.read(np.arange(lo, hi))

    def scan_finite(self, chunk_rows: int = 65536) -> None:
        """Raise DataError naming the file and row of the first NaN or inf value."""
        for shard in self.shards:
            arr = shard.array
            for lo in range(0, arr.shape[0], chunk_rows):
                block = np.asarray(arr[lo : lo + chunk_rows])
                finite = np.isfinite(block).all(axis=1)
                if not finite.all():
                    bad = lo + int(np.argmin(finite))
                    kind = "nan" if np.isnan(block[bad - lo]).any() else "inf"
                    raise DataError(f"{shard.path}: row {bad} holds a non-finite value ({kind})")


@dataclass
class Split:
    """Which global rows train and which evaluate."""

    train: tuple[int, int]
    eval: tuple[int, int]

    @property
    def n_train(self) -> int:
        """Rows in the training range."""
        return self.train[1] - self.train[0]


def split_rows(n_rows: int, eval_fraction: float) -> Split:
    """Hold out the last ⌈fraction·N⌉ rows (contiguous, so no document or game straddles the split)."""
    n_eval = int(np.ceil(eval_fraction * n_rows)) if eval_fraction > 0 else 0
    n_eval = min(n_eval, n_rows - 1)
    if n_eval == 0:
        return Split((0, n_rows), (0, n_rows))
    return Split((0, n_rows - n_eval), (n_rows - n_eval, n_rows))
