"""Training checkpoints that load without running code: tensors in safetensors, everything else in JSON.

One file, `checkpoint.safetensors`, written atomically: the tensors (weights, optimizer moments, RNG
state, tracker counters) are safetensors entries, and the rest of the state (step, configs, RNG
tuples, optimizer hyper-parameters) is a JSON index in the file's metadata, where each tensor
appears as {"__tensor__": name}. Loading parses a JSON string and a safetensors header; nothing is
unpickled, so a crafted checkpoint can at worst be refused.

The JSON index keeps the Python types a state dict uses: tuples, dicts with non-string keys,
numeric numpy arrays and non-finite floats each have a one-key marker object.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from saelab.errors import DataError
from saelab.util.atomic import atomic_save_safetensors

CHECKPOINT_FILE = "checkpoint.safetensors"
# A latent-sharded run's per-shard files, in one folder per checkpoint that CHECKPOINT_FILE names.
SHARD_CHECKPOINT_DIR = "checkpoint.shards"
LEGACY_CHECKPOINT = "checkpoint.pt"  # saelab ≤ 0.1: a pickle, refused unread
FORMAT = "saelab-checkpoint/1"
_NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
_NUMPY_DTYPE = re.compile(r"^[<>|=]?[biuf][1-8]$")


class _Unreadable(Exception):
    pass


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write `state` (nested dicts/lists/tuples of tensors, numbers, strings, numpy arrays) atomically to `path`."""
    tensors: dict[str, torch.Tensor] = {}
    index = _encode(state, tensors)
    metadata = {"format": FORMAT, "state": json.dumps(index, allow_nan=False, separators=(",", ":"))}
    atomic_save_safetensors(path, tensors, metadata=metadata)


def load_checkpoint(path: str | Path) -> dict:
    """The state saved by `save_checkpoint`; DataError naming the file if it is not exactly that."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise _Unreadable(f"format {metadata.get('format')!r}, expected {FORMAT!r}")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        index = json.loads(metadata.get("state", ""))
        used: set[str] = set()
        state = _decode(index, tensors, used)
    except FileNotFoundError:
        raise DataError(f"{path}: no checkpoint") from None
    except (_Unreadable, SafetensorError, OSError, ValueError, TypeError, RecursionError) as e:
        raise DataError(f"{path}: unreadable checkpoint ({_one_line(e)})") from None
    if not isinstance(state, dict):
        raise DataError(f"{path}: unreadable checkpoint (its index is not a JSON object)")
    unnamed = sorted(set(tensors) - used)
    if unnamed:
        raise DataError(
            f"{path}: unreadable checkpoint (holds tensors its index does not name: {', '.join(unnamed[:3])})"
        )
    return state


def refuse_legacy(folder: str | Path) -> None:
    """DataError if `folder` holds a pickle checkpoint of an older saelab (it is never opened)."""
    legacy = Path(folder) / LEGACY_CHECKPOINT
    if legacy.exists():
        raise DataError(
            f"{legacy}: unreadable checkpoint: saelab no longer loads pickle checkpoints (unpickling can run code); "
            "retrain with --overwrite, or delete the file if a newer checkpoint sits beside it"
        )


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:160]}" if not isinstance(e, _Unreadable) else text[:200]


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        # A copy: safetensors refuses tensors that share storage (views of one parameter).
        tensors[name] = obj.detach().to("cpu").clone().contiguous()
        return {"__tensor__": name}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else {"__float__": "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"cannot checkpoint a numpy array of dtype {obj.dtype}")
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def _decode(obj: Any, tensors: dict[str, torch.Tensor], used: set[str]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, used) for v in obj]
    if not isinstance(obj, dict):
        return obj  # str, int, float, bool, None: all JSON can hold
    if len(obj) == 1:
        ((key, value),) = obj.items()
        if key == "__tensor__":
            if not isinstance(value, str) or value not in tensors:
                raise _Unreadable(f"its index names a tensor {value!r} the file does not hold")
            used.add(value)
            return tensors[value]
        if key == "__tuple__" and isinstance(value, list):
            return tuple(_decode(v, tensors, used) for v in value)
        if key == "__items__" and isinstance(value, list):
            if not all(isinstance(p, list) and len(p) == 2 for p in value):
                raise _Unreadable("a malformed __items__ entry")
            return {_hashable(_decode(k, tensors, used)): _decode(v, tensors, used) for k, v in value}
        if key == "__float__" and value in _NONFINITE:
            return _NONFINITE[value]
    if set(obj) == {"__ndarray__", "dtype"}:
        dtype = obj["dtype"]
        if not isinstance(dtype, str) or not _NUMPY_DTYPE.match(dtype):
            raise _Unreadable(f"numpy dtype {dtype!r} is not a plain numeric type")
        return np.array(obj["__ndarray__"], dtype=np.dtype(dtype))
    odd = [k for k in obj if k.startswith("__")]
    if odd:
        raise _Unreadable(f"unknown marker {odd[0]!r} in its index")
    return {k: _decode(v, tensors, used) for k, v in obj.items()}


def _hashable(key: Any) -> Any:
    if isinstance(key, (str, int, float, bool, tuple)) or key is None:
        return key
    raise _Unreadable(f"a dictionary key of type {type(key).__name__}")
