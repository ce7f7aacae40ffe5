"""Reading the JSON state files saelab keeps (sweep.json, source.json, manifests): one object, its fields typed, errors naming the file and field."""

from __future__ import annotations

import json
from pathlib import Path

from saelab.errors import DataError

_TYPE_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
}


def read_json_object(path: str | Path, fields: dict[str, type | tuple[type, ...]] | None = None) -> dict:
    """The JSON object in `path`; DataError naming the file (and the field) when it is unreadable, not an object, or a field in `fields` is missing or mistyped."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: unreadable JSON ({e.msg} at line {e.lineno})") from None
    except (ValueError, RecursionError, OSError) as e:  # not UTF-8, nested beyond reason, a folder
        raise DataError(f"{path}: unreadable JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(data).__name__}")
    for key, typ in (fields or {}).items():
        if key not in data:
            raise DataError(f"{path}: field {key!r} is missing")
        value, types = data[key], typ if isinstance(typ, tuple) else (typ,)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise DataError(
                f"{path}: {key}={_short(value)} must be {' or '.join(_TYPE_NAMES.get(t, t.__name__) for t in types)}"
            )
    return data


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
