"""One checker for values read from config files and flags, driven by the dataclass field annotations.

TOML and JSON carry their own types, so `auxk = "false"` or `alpha = "0.1"` arrive as strings: each
value is checked against its field's annotation and refused with the field's name, never coerced.
TOML has no null, so the words `none`/`null` mean None where a field allows None (and nowhere else).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Union

from saelab.errors import ConfigError

NONE_WORDS = ("none", "null")


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass's fields (string annotations evaluated once)."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError, AttributeError):  # an annotation naming something out of scope: leave it unchecked
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def _qualified(where: str | None, key: str) -> str:
    return f"{where}.{key}" if where else key


def check_fields(cls: type, data: dict, where: str | None = None) -> dict:
    """`data` with every value that names a field of `cls` checked against that field's type; other keys pass through."""
    if not isinstance(data, dict):
        raise ConfigError(where or cls.__name__, data, f"must be a table of {cls.__name__} fields, not {_kind(data)}")
    hints = field_types(cls)
    return {k: check_value(_qualified(where, k), hints[k], v) if k in hints else v for k, v in data.items()}


def build(cls: type, data: dict, where: str | None = None):
    """`cls(**data)` after refusing unknown keys, values of the wrong type and missing required fields."""
    if not isinstance(data, dict):
        raise ConfigError(where or cls.__name__, data, f"must be a table of {cls.__name__} fields, not {_kind(data)}")
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(_qualified(where, key), value, "unknown key")
    checked = check_fields(cls, data, where)
    for f in dataclasses.fields(cls):
        if f.name not in checked and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(_qualified(where, f.name), None, "required")
    return cls(**checked)


def check_value(name: str, annotation: Any, value: Any) -> Any:
    """`value` if it has the annotated type (tuples from lists, None from 'none' where allowed); else ConfigError."""
    if annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        none_allowed = len(options) < len(typing.get_args(annotation))
        if none_allowed and (value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS)):
            return None
        for option in options:
            try:
                return check_value(name, option, value)
            except ConfigError:
                pass
        raise ConfigError(name, value, f"must be {_describe(annotation)}, not {_kind(value)}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(name, value, f"must be true or false, not {_kind(value)}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(name, value, f"must be an integer, not {_kind(value)}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        raise ConfigError(name, value, f"must be a number, not {_kind(value)}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(name, value, f"must be a string, not {_kind(value)}")
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, value, f"must be {_describe(annotation)}, not {_kind(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_value(name, args[0], v) for v in value)
        if len(value) != len(args):
            raise ConfigError(name, value, f"must be {_describe(annotation)}, not {len(value)} values")
        return tuple(check_value(name, a, v) for a, v in zip(args, value))
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(name, value, f"must be {_describe(annotation)}, not {_kind(value)}")
        (arg,) = typing.get_args(annotation) or (Any,)
        return value if dataclasses.is_dataclass(arg) else [check_value(name, arg, v) for v in value]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(name, value, f"must be a table of key = value pairs, not {_kind(value)}")
        args = typing.get_args(annotation)
        if args and args[0] is str and any(not isinstance(k, str) for k in value):
            raise ConfigError(name, value, "keys must be strings")
        return (
            value
            if not args or args[1] is Any
            else {k: check_value(f"{name}.{k}", args[1], v) for k, v in value.items()}
        )
    return value  # a type this checker does not know (a nested dataclass): its own builder checks it


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = typing.get_args(annotation)
        parts = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or none" if type(None) in args else "")
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list of {len(args)} values"
    if origin is list:
        return "a list"
    if origin is dict or annotation is dict:
        return "a table of key = value pairs"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _plural(annotation: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(annotation, "values")


def _kind(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"
