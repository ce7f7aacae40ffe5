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


# ---- reading foreign folders: which class a SAELens architecture or a sparsify config becomes ----------

# One class per SAELens architecture, marked in its method's file: Multi-TopK exports as "topk" too, but a
# "topk" folder holds no trace of its training loss, so it reads as TopK.
SAELENS_READERS: dict[str, type] = {}
SPARSIFY_READERS: list[type] = []


def reads_saelens(cls: T) -> T:
    """Class decorator: a SAELens folder of architecture `cls.saelens_name` is read as `cls` (one class per architecture)."""
    arch = cls.saelens_name
    if arch is None or arch in SAELENS_READERS:
        raise ValueError(f"SAELens architecture {arch!r} has no name or is read by two classes")
    SAELENS_READERS[arch] = cls
    return cls


def reads_sparsify(cls: T) -> T:
    """Class decorator: a sparsify folder whose config `cls.reads_sparsify_cfg` accepts is read as `cls`."""
    SPARSIFY_READERS.append(cls)
    return cls


def saelens_reader(architecture, activation_fn=None) -> type | None:
    """The Activation class a SAELens folder of `architecture` is read as, or None.

    `activation_fn` is SAELens 5's, given for its architecture "standard": a method it saved that way
    (`saelens_activation_fn`) takes precedence over the architecture.
    """
    if activation_fn is not None:
        for cls in SAELENS_READERS.values():
            if cls.saelens_activation_fn == activation_fn:
                return cls
    return SAELENS_READERS.get(architecture) if isinstance(architecture, str) else None


def saelens_architectures() -> list[str]:
    """The SAELens architectures saelab reads."""
    return sorted(SAELENS_READERS)


def sparsify_reader(cfg: dict) -> type | None:
    """The Activation class a sparsify folder with config `cfg` is read as, or None (ValueError if two claim it)."""
    found = [cls for cls in SPARSIFY_READERS if cls.reads_sparsify_cfg(cfg)]
    if len(found) > 1:
        raise ValueError(f"sparsify config read by {len(found)} methods: {', '.join(c.name for c in found)}")
    return found[0] if found else None
