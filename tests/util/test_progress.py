"""The progress reporter: plain lines when piped (start, every 5% or 30 s, done), a tqdm bar on a terminal, silence when off."""

import io
import re

from saelab.util.progress import Progress, stage, track


def test_piped_lines_every_share_with_rate_and_eta():
    out = io.StringIO()  # not a terminal
    with Progress("fit", total=200, unit="task", stream=out, every_s=1e9, min_gap_s=0.0) as p:
        for _ in range(200):
            p.update()
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("fit: start (200 task)")
    middle = lines[1:-1]
    assert len(middle) == 19  # every 5% of 200 = 10 steps, the last one reported by the closing line instead
    assert all(re.search(r"fit: \d+/200 task, \d+%, .* task/s, elapsed \d+:\d\d, ETA \d+:\d\d$", x) for x in middle)
    assert re.search(r"fit: done 200/200 task, 100%", lines[-1]) and "ETA" not in lines[-1]
    assert not any("\r" in x or "\x1b" in x for x in lines)  # no bar control characters in a pipe


def test_piped_lines_by_time_and_stage():
    out = io.StringIO()
    items = list(track(range(5), "scan", stream=out, every_s=0.0, min_gap_s=0.0))
    assert items == list(range(5))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + 4 + 1  # start, one per step before the last, done
    with stage("harvest", stream=out):
        pass
    assert out.getvalue().splitlines()[-1].split("] ", 1)[1].startswith("harvest: done 0 stage")


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_terminal_gets_a_bar_and_off_is_silent(monkeypatch):
    tty = _Tty()
    with Progress("fit", total=3, stream=tty) as p:
        p.update(3)
    assert "\r" in tty.getvalue() and "3/3" in tty.getvalue()
    monkeypatch.setenv("SAELAB_PROGRESS", "off")
    quiet = io.StringIO()
    with Progress("fit", total=3, stream=quiet) as p:
        p.update(3)
        p.note("hello")
    assert quiet.getvalue() == ""


def test_library_bars_quiet_only_when_piped(monkeypatch):
    from saelab.util.progress import quiet_library_bars

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    quiet_library_bars(_Tty())
    import os

    assert "TQDM_DISABLE" not in os.environ
    quiet_library_bars(io.StringIO())
    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
