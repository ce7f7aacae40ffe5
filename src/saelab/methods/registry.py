"""Name → class registry for sparsity methods (activations and penalties).

The built-in methods register themselves when `saelab.methods` is imported (importing this module
imports that package first), so a lookup always sees them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, TypeVar

from saelab.errors import ConfigError
from saelab.util.typecheck import check_fields

ACTIVATIONS: dict[str, type] = {}
PENALTIES: dict[str, type] = {}

T = TypeVar("T", bound=type)


def register_activation(name: str) -> Callable[[T], T]:
    """Class decorator: make an Activation available under `name`."""

    def wrap(cls: T) -> T:
        if name in ACTIVATIONS or name in PENALTIES:
            raise ValueError(f"sparsity method {name!r} registered twice")
        cls.name = name
        ACTIVATIONS[name] = cls
        return cls

    return wrap


def register_penalty(name: str) -> Callable[[T], T]:
    """Class decorator: make a Penalty available under `name`."""

    def wrap(cls: T) -> T:
        if name in ACTIVATIONS or name in PENALTIES:
            raise ValueError(f"sparsity method {name!r} registered twice")
        cls.name = name
        PENALTIES[name] = cls
        return cls

    return wrap


def _lookup(table: dict[str, type], name: str, field: str) -> type:
    if name not in table:
        raise ConfigError(field, name, f"unknown; choose one of {', '.join(sorted(table))}")
    return table[name]


def activation_class(name: str) -> type:
    """The Activation class registered as `name` (ConfigError if unknown)."""
    return _lookup(ACTIVATIONS, name, "method")


def penalty_class(name: str) -> type:
    """The Penalty class registered as `name` (ConfigError if unknown)."""
    return _lookup(PENALTIES, name, "penalty")


def activations_with_param(param: str) -> list[str]:
    """Names of the registered activations whose parameters include `param` (e.g. the TopK family's `k`)."""
    return sorted(
        name for name, cls in ACTIVATIONS.items() if any(f.name == param for f in dataclasses.fields(cls.Params))
    )


def build_params(cls: type, given: dict[str, Any], field: str):
    """Instantiate `cls.Params` from a dict, naming unknown keys and bad values."""
    known = {f.name: f for f in dataclasses.fields(cls.Params)}
    for key in given:
        if key not in known:
            listed = ", ".join(known) or "none"
            raise ConfigError(
                f"{field}.{key}", given[key], f"not a parameter of {cls.name!r} (its parameters: {listed})"
            )
    params = cls.Params(**check_fields(cls.Params, given, field))
    params.validate(f"{field}")
    return params


def param_names() -> dict[str, list[str]]:
    """Every parameter name used by any method, with the methods that use it."""
    out: dict[str, list[str]] = {}
    for table in (ACTIVATIONS, PENALTIES):
        for name, cls in table.items():
            for f in dataclasses.fields(cls.Params):
                out.setdefault(f.name, []).append(name)
    return out
