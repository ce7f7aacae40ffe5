"""Reading JSON-lines files (results.jsonl): one object per line, errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from saelab.errors import DataError


def jsonl_objects(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; DataError naming `path:line` for anything else."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: cannot read ({e})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(data, dict):
            raise DataError(f"{p}:{lineno}: expected a JSON object, got {type(data).__name__}")
        yield lineno, data
