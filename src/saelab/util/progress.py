"""Progress of a long command: a tqdm bar on a terminal, plain timestamped lines when stderr is piped.

Piped, a stage prints one line when it starts, one every `every_s` seconds or `every_frac` of its
total (whichever comes first, never more often than `min_gap_s`), each with step/total, rate and
ETA, and one when it ends. Everything goes to stderr, so stdout stays machine-readable (--json);
SAELAB_PROGRESS=off silences it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Iterable, Iterator, TypeVar

T = TypeVar("T")


def _is_tty(stream: IO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """One stage of `total` steps (None: unknown). Use as a context manager; call update(n) per step."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", stream: IO | None = None,
                 every_s: float = 30.0, every_frac: float = 0.05, min_gap_s: float = 1.0, enabled: bool | None = None,
                 initial: int = 0):  # fmt: skip
        self.desc, self.total, self.unit = desc, total, unit
        self.fields: dict[str, str] = {}  # the latest postfix (loss, L0, …), shown on the bar or in each line
        self.stream = stream if stream is not None else sys.stderr
        self.every_s, self.every_frac, self.min_gap_s = every_s, every_frac, min_gap_s
        quiet = os.environ.get("SAELAB_PROGRESS", "").lower() in ("0", "off", "none")
        self.enabled = (not quiet) if enabled is None else enabled
        self.n = self._start = initial  # a resumed stage counts its rate from where it resumed
        self._t0 = time.perf_counter()
        self._last_t, self._last_n = self._t0, initial
        self._bar = None
        self._closed = False
        if not self.enabled:
            return
        if _is_tty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True, leave=True
            )
        else:
            at = f", from {initial}" if initial else ""
            self._line(f"{desc}: start" + (f" ({total} {unit}{at})" if total is not None else ""))

    def _line(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)

    def _status(self) -> str:
        elapsed = time.perf_counter() - self._t0
        rate = (self.n - self._start) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total is not None else "") + f" {self.unit}"]
        if self.total:
            parts.append(f"{100 * self.n / self.total:.0f}%")
        parts.append(f"{rate:.3g} {self.unit}/s")
        parts.append(f"elapsed {_clock(elapsed)}")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        parts += [f"{k} {v}" for k, v in self.fields.items()]
        return ", ".join(parts)

    def postfix(self, **fields: str) -> None:
        """Set the figures shown beside the count (the bar's postfix on a terminal, each line when piped)."""
        self.fields = dict(fields)
        if self.enabled and self._bar is not None:
            self._bar.set_postfix(**fields)

    def update(self, n: int = 1) -> None:
        """Count n more steps done."""
        self.n += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        by_time = now - self._last_t >= self.every_s
        by_share = bool(self.total) and (self.n - self._last_n) >= self.every_frac * self.total
        if (by_time or by_share) and now - self._last_t >= self.min_gap_s and (not self.total or self.n < self.total):
            self._line(self._status())
            self._last_t, self._last_n = now, self.n

    def note(self, text: str) -> None:
        """A one-off line inside this stage (shown above the bar on a terminal)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(f"{self.desc}: {text}", file=self.stream)
        else:
            self._line(f"{self.desc}: {text}")

    def close(self) -> None:
        """End the stage: close the bar, or print the closing line when piped."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            self._line(self._status().replace(f"{self.desc}: ", f"{self.desc}: done ", 1))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", **kw) -> Iterator[T]:
    """Yield items, reporting one step per item (total from len(items) when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(desc, total, unit, **kw) as p:
        for x in items:
            yield x
            p.update()


def stage(desc: str, **kw) -> Progress:
    """A stage with no step count: a start line and a done line with its time (a spinner on a terminal)."""
    return Progress(desc, None, "stage", **kw)


def quiet_library_bars(stream: IO | None = None) -> None:
    """When stderr is piped, turn off other libraries' tqdm bars (Hugging Face's, any tqdm ≥ 4.66) so only our lines reach the pipe."""
    if _is_tty(stream if stream is not None else sys.stderr):
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if "transformers" in sys.modules:  # imported before us: its switch was read at import
        sys.modules["transformers"].utils.logging.disable_progress_bar()
