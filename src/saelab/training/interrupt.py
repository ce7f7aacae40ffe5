"""SIGINT and SIGTERM during training: finish the current step, checkpoint it, and say how to resume."""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(BaseException):
    """Training stopped on a signal; the CLI exits with 128 + its number (130 for Ctrl-C, 143 for SIGTERM).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way up turns it
    into a data error.
    """

    def __init__(self, signum: int, message: str):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(message)


def signal_name(signum: int) -> str:
    """'SIGINT', 'SIGTERM', … for a signal number."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopSignals:
    """While installed, SIGINT/SIGTERM are caught: recorded for the loop when `armed`, raised at once otherwise.

    The training loop arms it around its steps and checks `signum` after each one, so an
    interruption lands between two steps, where a checkpoint resumes exactly. A second signal
    while one is pending stops at once (the user insists).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        # Handlers can only be installed from the main thread; elsewhere signals keep their defaults.
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.armed and self.signum is None:
            self.signum = signum
            return
        raise TrainingInterrupted(signum, f"interrupted by {signal_name(signum)}")
