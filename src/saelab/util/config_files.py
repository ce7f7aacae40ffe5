"""Reading a run config file: a TOML table, or a JSON object (such as the run.json every run writes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from saelab.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_config(path: str | Path) -> dict[str, Any]:
    """The mapping a run config file holds: TOML, or JSON (such as the run.json every run writes)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config", str(path), "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("config", str(path), f"unreadable ({type(e).__name__}: {e})") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError("config", str(path), f"not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, dict):
            raise ConfigError("config", str(path), "must hold a JSON object")
        return data
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", str(path), f"not valid TOML ({e})") from None
