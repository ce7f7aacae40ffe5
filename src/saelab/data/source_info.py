"""The provenance record beside a set of activations: source.json in a folder, X.source.json beside X.npy."""

from __future__ import annotations

import json
from pathlib import Path

from saelab.errors import DataError


def read_source_info(path: str | Path) -> dict | None:
    """Provenance written beside the activations (source.json in a folder, X.source.json for X.npy)."""
    path = Path(path)
    candidates = [path / "source.json", path / "manifest.json"] if path.is_dir() else [path.with_suffix(".source.json")]
    for c in candidates:
        if c.exists():
            try:
                info = json.loads(c.read_text())
            except (ValueError, RecursionError, OSError) as e:  # bad JSON, not UTF-8, a folder
                raise DataError(f"{c}: unreadable JSON ({getattr(e, 'msg', type(e).__name__)})") from None
            if not isinstance(info, dict):
                raise DataError(f"{c}: expected a JSON object, found {type(info).__name__}")
            info.pop("shards", None)
            return info
    return None
