"""Where saelab caches what it can recompute (file digests, compiled kernels)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """SAELAB_CACHE_DIR, else $XDG_CACHE_HOME/saelab, else ~/.cache/saelab."""
    if os.environ.get("SAELAB_CACHE_DIR"):
        return Path(os.environ["SAELAB_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "saelab"
