"""Thread counts for the sparse path's two kinds of work (the dense product uses torch's setting).

- Big passes (group maxima over [B, n], top-k over [B, n/g], the row gathers and sums over
  [n, d] tables) run on `sparse_threads()`. These are memory-bound passes of tens of ms each,
  and an OpenMP team waits at every barrier for a member the OS has descheduled: on a machine
  whose cores are oversubscribed (1-minute load average above the CPU count, e.g. another job
  running beside a 2-thread trainer on 2 cores) one thread is faster — measured here, a 2-core
  machine with other jobs running: the step went from 1.30× to 1.19× the floor. So by default
  ("auto") they use one thread when the machine is oversubscribed and torch's count otherwise;
  SAELAB_SPARSE_THREADS=N fixes the count. The dense product always uses torch's count.
- Entry-level bookkeeping (masks, sorts, counts and index shuffles over the B·k selected entries,
  ~10⁵ elements) runs on one thread: splitting it saves microseconds, while waiting for a
  descheduled team member can cost milliseconds per operation. Entry sets past BIG_ENTRY_SET
  (AuxK's B·k_aux, ~10⁶) are big passes again: a stable argsort of 1.7 M latent ids took 88 ms on
  one thread and 52 ms on two here.
"""

from __future__ import annotations

import contextlib
import os

import torch

BIG_ENTRY_SET = 1 << 19


def sparse_threads() -> int:
    """Threads for the sparse path's big passes: SAELAB_SPARSE_THREADS=N, or "auto" (the default)."""
    value = os.environ.get("SAELAB_SPARSE_THREADS", "auto").strip().lower()
    count = torch.get_num_threads()
    if value not in ("", "auto"):
        return max(1, int(value))
    return 1 if count > 1 and oversubscribed() else count


def oversubscribed() -> bool:
    """Whether more threads are runnable than there are CPUs (1-minute load average)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return False
    return load >= (os.cpu_count() or 1) + 0.5


@contextlib.contextmanager
def _using(count: int, device: torch.device):
    before = torch.get_num_threads()
    if device.type != "cpu" or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def parallel(device: torch.device):
    """Context: big passes, on `sparse_threads()` threads."""
    return _using(sparse_threads(), device)


def single(device: torch.device):
    """Context: entry-level bookkeeping, on one thread."""
    return _using(1, device)


def for_entries(count: int, device: torch.device):
    """Context: bookkeeping over `count` entries — one thread, or the big passes' count past BIG_ENTRY_SET."""
    return parallel(device) if count >= BIG_ENTRY_SET else single(device)
