"""Reusable memory for the sparse path's large tensors: the [B, n] pre-activations and W_enc's gradient.

A fresh multi-MB tensor costs a page fault per 4 KiB page every step (the allocator hands blocks
this large back to the OS when they are freed), which on a CPU costs as much as several passes
over the data. So the pre-activations go into one scratch buffer kept per (tag, device, dtype);
it never escapes, every tensor a kernel returns or saves being a copy of selected entries.
W_enc's gradient, which the backward writes in one transposing copy anyway, goes into a buffer
kept per parameter and handed out again only when nothing else still references its memory (the
previous gradient was dropped, e.g. by zero_grad(set_to_none=True)); otherwise a new one is made.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor

_scratch: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}
# id(param) → (weak reference to param, buffer); an entry goes when its parameter is collected.
_grads: dict[int, tuple[weakref.ref, Tensor]] = {}


def scratch(tag: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialized tensor of `shape`, valid until the next call with the same tag."""
    numel = math.prod(shape)
    key = (tag, torch.device(device), dtype)
    buf = _scratch.get(key)
    if buf is None or buf.numel() < numel:
        _scratch.pop(key, None)  # free the old one before allocating the larger one
        buf = torch.empty(numel, dtype=dtype, device=device)
        _scratch[key] = buf
    return buf[:numel].view(shape)


def _storage_users(t: Tensor) -> int | None:
    """How many tensors share t's memory, or None when this torch cannot tell."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:
        return None
    return count(t.untyped_storage()._cdata) - 1  # the probe's own storage handle holds one


def gradient_buffer(param: Tensor) -> Tensor:
    """An uninitialized tensor shaped and strided like `param`, to be returned as its gradient.

    The result is a fresh view; if the buffer behind it is still in use (a gradient someone kept),
    a new buffer replaces it in the cache, so a kept gradient is never overwritten.
    """
    entry = _grads.get(id(param))
    buf = entry[1] if entry is not None and entry[0]() is param else None
    if buf is None or buf.shape != param.shape or buf.dtype != param.dtype or _storage_users(buf) != 1:
        if entry is None or entry[0]() is not param:
            weakref.finalize(param, _grads.pop, id(param), None)
        buf = torch.empty_like(param, memory_format=torch.preserve_format)
        _grads[id(param)] = (weakref.ref(param), buf)
    return buf.view(buf.shape)


def release() -> None:
    """Drop every cached buffer (e.g. after training, to return the memory)."""
    _scratch.clear()
    _grads.clear()
