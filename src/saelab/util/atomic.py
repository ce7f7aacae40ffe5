"""Atomic writes: every file saelab writes appears whole or not at all (a leaf: imports nothing of saelab)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import torch
from safetensors.torch import save_file

TEMP_PREFIX = ".tmp-"  # every atomic write's temporary file starts with this; cleaners match on it


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def _replacing(path: str | Path) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it becomes `path` by one rename, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600; outputs should read like any other file
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename == tmp:
            e.filename = str(path)  # the user knows the file, not its temporary name
        raise


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call `write(file)` on a temporary file, fsync it and rename it to `path`: readers never see half a file."""
    with _replacing(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes to `path` via a temporary file and a rename, so readers never see half a file."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Atomic JSON write, indented; NaN/inf become null with a reason (see `json_safe`)."""
    atomic_write_text(path, dumps_json(data, indent=2) + "\n")


# Why a metric can be undefined; other non-finite values are reported as such.
NULL_REASONS = {
    "nmse": "undefined: zero variance in the activations, or a non-finite reconstruction",
    "explained_variance": "undefined: zero variance in the activations, or a non-finite reconstruction",
    "relative_reconstruction_bias": "undefined: the reconstructions have zero projection on the inputs",
}


def json_safe(data: Any) -> Any:
    """A copy of `data` with each NaN/inf replaced by None, and the reason under `null_reasons` in the enclosing dict."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        out, reasons = {}, {}
        for key, value in data.items():
            safe = json_safe(value)
            if isinstance(value, float) and not math.isfinite(value):
                reasons[str(key)] = NULL_REASONS.get(str(key), f"not a finite number ({value})")
            elif isinstance(value, (list, tuple)) and _has_nonfinite(value):
                reasons[str(key)] = "holds non-finite numbers, written as null"
            out[key] = safe
        if reasons:
            out["null_reasons"] = (
                {**out.get("null_reasons", {}), **reasons} if isinstance(out.get("null_reasons"), dict) else reasons
            )
        return out
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def _has_nonfinite(values) -> bool:
    return any(
        (isinstance(v, float) and not math.isfinite(v)) or (isinstance(v, (list, tuple)) and _has_nonfinite(v))
        for v in values
    )


def dumps_json(data: Any, **kwargs) -> str:
    """json.dumps of `json_safe(data)` with allow_nan=False: the text never holds NaN or Infinity."""
    return json.dumps(json_safe(data), allow_nan=False, **kwargs)


def atomic_save_safetensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """safetensors save through a temporary file and a rename."""
    with _replacing(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
