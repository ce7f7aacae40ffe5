"""The wall time a reproduction took, over every run that resumed it.

A `full` reproduction takes hours and is often killed and resumed; the time of its last run alone
would understate what it cost. Each run appends a segment to DIR/time.json and keeps its length
current every `TICK` seconds from a daemon thread, so a killed run leaves its time to within a tick.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from saelab.util.atomic import atomic_write_json

TIME_FILE = "time.json"
TICK = 30.0


class WallClock:
    """Records this run's wall time as one more segment of DIR/time.json while it runs (a context manager)."""

    def __init__(self, root: Path, tick: float = TICK):
        self.path = Path(root) / TIME_FILE
        self.tick = tick
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._segments = read_segments(self.path)
        self._segments.append({"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": 0.0})
        self._thread = threading.Thread(target=self._run, name="saelab-wall-clock", daemon=True)

    def __enter__(self) -> "WallClock":
        self._save()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._save()

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            self._save()

    def _save(self) -> None:
        with self._lock:
            self._segments[-1]["seconds"] = round(time.monotonic() - self._start, 1)
            atomic_write_json(self.path, {"segments": self._segments})

    @property
    def segments(self) -> list[dict]:
        """Every run's segment so far, this one last (its seconds as of now)."""
        with self._lock:
            self._segments[-1]["seconds"] = round(time.monotonic() - self._start, 1)
            return [dict(s) for s in self._segments]


def read_segments(path: Path) -> list[dict]:
    """The segments recorded in a time.json (none for a missing or unreadable file: the time is then this run's)."""
    try:
        record = json.loads(Path(path).read_text())
        return [{"started": str(s["started"]), "seconds": float(s["seconds"])} for s in record["segments"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def describe(segments: list[dict]) -> str:
    """'5617 s' for one run, '5617 s over 2 runs (resumed once)' otherwise."""
    total = sum(s["seconds"] for s in segments)
    if len(segments) <= 1:
        return f"{total:.0f} s"
    again = len(segments) - 1
    return f"{total:.0f} s over {len(segments)} runs (resumed {'once' if again == 1 else f'{again} times'})"
