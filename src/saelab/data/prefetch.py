"""Batches read ahead in a background thread, so reading and shuffling overlap the training steps."""

from __future__ import annotations

import queue
import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

# Two batches ahead: one in hand while the next is read, and slack to absorb a shuffle-buffer refill
# (the one slow batch of a buffer) without the step waiting. Each costs batch × d_in floats.
DEPTH = 2
# How often a thread blocked on the queue looks whether it should stop (a put or get never waits blind).
POLL_S = 0.1


class _Failed:
    """What the thread hands over instead of a batch when producing it raised."""

    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher(Generic[T]):
    """`produce(p)` for p = start, start + 1, …, stop - 1, computed up to `depth` ahead in a daemon thread.

    `get(p)` returns exactly what `produce(p)` returned, and positions must be asked for in order. An
    exception raised by `produce(p)` is raised again, the same object (type, message, traceback), by
    `get(p)`: where the synchronous loop would have raised it. `close()` (or leaving a `with` block)
    stops the thread and waits for the batch it is producing; call it on every way out. `depth` 0
    produces in `get` itself, with no thread.

    While the thread runs it owns `produce` and whatever state it keeps (BatchStream's buffer
    caches): the caller must not call it too. The thread should stay in numpy — torch's intra-op pool
    and its thread count belong to the training steps.
    """

    def __init__(
        self, produce: Callable[[int], T], start: int, stop: int, depth: int = DEPTH, name: str = "saelab-prefetch"
    ):
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self._produce = produce
        self._next = start
        self._stop = stop
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        if depth > 0 and start < stop:
            # A daemon, so that a thread stuck in a read can never keep the process alive.
            self._thread = threading.Thread(target=self._run, args=(start,), name=name, daemon=True)
            self._thread.start()

    def __enter__(self) -> "Prefetcher[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """Whether the background thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self, start: int) -> None:
        for p in range(start, self._stop):
            if self._closing.is_set():
                return
            try:
                item = self._produce(p)
            except BaseException as e:  # handed to the main thread, which raises it at this position
                self._put(_Failed(e))
                return
            if not self._put(item):
                return

    def _put(self, item) -> bool:
        while not self._closing.is_set():
            try:
                self._queue.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                pass
        return False

    def get(self, position: int) -> T:
        """What `produce(position)` returned; `position` must be the next one (start, start + 1, …)."""
        if position != self._next:
            raise ValueError(f"batch {position} asked for, but the next one is {self._next} (positions come in order)")
        if position >= self._stop:
            raise IndexError(f"batch {position} is past the last one ({self._stop - 1})")
        if self._closing.is_set():
            raise RuntimeError("the prefetcher is closed")
        self._next += 1
        if self._thread is None:
            return self._produce(position)
        while True:
            try:
                item = self._queue.get(timeout=POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError(f"the prefetch thread ended before producing batch {position}") from None
        if isinstance(item, _Failed):
            error, item.error = item.error, None
            raise error
        return item

    def close(self) -> None:
        """Stop the thread, wait for it, and drop the batches it read ahead (safe to call more than once)."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join()  # at most the batch being produced; a second Ctrl-C interrupts the wait
            self._thread = None
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
