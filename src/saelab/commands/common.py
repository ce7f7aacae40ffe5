"""What several command groups share: the --threads option and flag parsing helpers."""

from __future__ import annotations

import argparse

import torch

from saelab.config import require_positive_int


def add_threads(parser: argparse.ArgumentParser) -> None:
    """Add `--threads N` (cli.main applies it once, before the command runs)."""
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def set_threads(threads: int | None) -> None:
    """Apply `--threads` (validated: a shared machine is the reason to set it, a typo must not go unnoticed)."""
    if threads is None:
        return
    require_positive_int("threads", threads)
    torch.set_num_threads(threads)


def scalar(text: str):
    """Parse a method parameter from the command line: int, float, none, or a string."""
    if text.lower() in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text
