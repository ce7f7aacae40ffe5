"""Reusable memory for the sparse path's large tensors: the [B, n] pre-activations and W_enc's gradient.

A fresh multi-MB tensor costs a page fault per 4 KiB page every step (the allocator hands blocks
this large back to the OS when they are freed), which on a CPU costs as much as several passes
over the data. So the pre-activations go into one scratch buffer kept per (tag, device, dtype);
it never escapes, every tensor a kernel returns or saves being a copy of selected entries.
W_enc's gradient, which the backward writes in one transposing copy anyway, goes into a buffer
kept per parameter and handed out again only once the gradient made from it is known to be gone
(it became param.grad, which was then dropped, e.g. by zero_grad(set_to_none=True), watched through
public hooks and weak references); otherwise a new one is made.

Lean mode (`with lean():`, what TrainConfig.lean_memory turns on) trades those page faults for
memory: gradients are never cached, the trainer drops the scratch buffers between the forward
and the backward pass (`release_scratch`), the pre-activations come in smaller chunks
(topk_encode.LEAN_PRE_BUDGET_BYTES), and blocks of memory above LEAN_MMAP_BYTES go back to the OS
when freed instead of staying in the allocator's heap (glibc's M_MMAP_THRESHOLD: without it, a
step's freed temporaries stay resident, about 330 MiB at (768, 65,536)).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

_scratch: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}
# id(param) → its gradient memory; an entry goes when its parameter is collected.
_grads: dict[int, "_Grad"] = {}
_hooks: dict[int, object] = {}  # id(param) → the handle of its post-accumulate hook
_lean = 0  # depth of nested lean() blocks
LEAN_MMAP_BYTES = 1 << 20
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_mmap_set = False


@contextlib.contextmanager
def lean():
    """Inside: no cached gradients, smaller pre-activation chunks, freed large blocks returned to the OS."""
    global _lean
    _return_large_frees()
    _lean += 1
    try:
        yield
    finally:
        _lean -= 1


def is_lean() -> bool:
    """Whether a lean() block is active."""
    return _lean > 0


def _return_large_frees() -> None:
    """Set glibc's mmap threshold so freed blocks above LEAN_MMAP_BYTES leave the process (once; no-op elsewhere).

    Process-wide and kept afterwards: allocations above 1 MiB then cost an mmap and page faults,
    which the cached buffers of the normal mode mostly avoid.
    """
    global _mmap_set
    if _mmap_set:
        return
    _mmap_set = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(M_MMAP_THRESHOLD, LEAN_MMAP_BYTES)
    except (OSError, AttributeError):  # not glibc (macOS, musl): the allocator keeps its own policy
        pass


def release_scratch() -> None:
    """Drop the scratch buffers (lean mode, between the forward and the backward pass)."""
    _scratch.clear()


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
    In lean mode nothing is cached: the memory goes when the gradient does.
    """
    if is_lean():
        return torch.empty_like(param, memory_format=torch.preserve_format)
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
