"""Reusable memory for the sparse path's large tensors: the [B, n] pre-activations and W_enc's gradient.

A fresh multi-MB tensor costs a page fault per 4 KiB page every step (the allocator hands blocks
this large back to the OS when they are freed), which on a CPU costs as much as several passes
over the data. So the pre-activations go into one scratch buffer kept per (tag, device, dtype);
it never escapes, every tensor a kernel returns or saves being a copy of selected entries.
W_enc's gradient, which the backward writes in one transposing copy anyway, goes into a buffer
kept per parameter and handed out again only once the gradient made from it is known to be gone
(it became param.grad, which was then dropped, e.g. by zero_grad(set_to_none=True), watched through
public hooks and weak references); otherwise a new one is made.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

_scratch: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}
# id(param) → its gradient memory; an entry goes when its parameter is collected.
_grads: dict[int, "_Grad"] = {}
_hooks: dict[int, object] = {}  # id(param) → the handle of its post-accumulate hook


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


@dataclass
class _Grad:
    """W_enc's gradient memory for one parameter, and what is known about who still holds it."""

    param: weakref.ref
    storage: torch.UntypedStorage
    shape: torch.Size
    stride: tuple[int, ...]
    dtype: torch.dtype
    holder: weakref.ref | None = None  # param.grad, once autograd made it from this memory

    def reusable(self, param: Tensor) -> bool:
        """Whether the memory can be handed out again as `param`'s gradient."""
        if self.param() is not param or self.shape != param.shape or self.dtype != param.dtype:
            return False
        # Known only through param.grad: a gradient that went anywhere else (autograd.grad, a sum
        # into an existing .grad) is never known to be gone, and its memory is not reused.
        return self.holder is not None and self.holder() is None


def _forget(key: int) -> None:
    _grads.pop(key, None)
    _hooks.pop(key, None)


def _accumulated(param: Tensor) -> None:
    """Post-accumulate hook: when param.grad is the cached memory, watch it."""
    entry = _grads.get(id(param))
    if entry is None or entry.param() is not param or entry.holder is not None:
        return
    grad = param.grad
    if grad is not None and grad.untyped_storage().data_ptr() == entry.storage.data_ptr():
        # A weak reference to the tensor: it (and any view or slice of it, which keeps it as its
        # base) must be gone before the memory is reused; zero_grad(set_to_none=True) drops it.
        entry.holder = weakref.ref(grad)


def gradient_buffer(param: Tensor) -> Tensor:
    """An uninitialized tensor shaped and strided like `param`, to be returned as its gradient.

    The memory is handed out again only once the gradient made from it has gone: it became
    param.grad and that tensor, with every view of it, was dropped (zero_grad(set_to_none=True)).
    Otherwise (a kept gradient, torch.autograd.grad, a sum into an existing .grad) a new
    buffer replaces it in the cache, so a kept gradient is never overwritten. Aliases that are not
    views (.detach(), .numpy()) are not seen: clone a gradient to keep it past the next backward.
    """
    entry = _grads.get(id(param))
    if entry is not None and entry.reusable(param):
        buf = param.new_empty(0).set_(entry.storage, 0, entry.shape, entry.stride)
    else:
        if entry is None or entry.param() is not param:
            weakref.finalize(param, _forget, id(param))
            _hooks[id(param)] = param.register_post_accumulate_grad_hook(_accumulated)
        buf = torch.empty_like(param, memory_format=torch.preserve_format)
    _grads[id(param)] = _Grad(weakref.ref(param), buf.untyped_storage(), buf.shape, buf.stride(), buf.dtype)
    return buf


def release() -> None:
    """Drop every cached buffer (e.g. after training, to return the memory)."""
    _scratch.clear()
    _grads.clear()
    for handle in _hooks.values():
        handle.remove()
    _hooks.clear()
