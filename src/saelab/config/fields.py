"""Config fields: the option() that also describes a flag, and the one-line checks every config value passes."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any

from saelab.errors import ConfigError
from saelab.util.typecheck import build


def option(
    default=dataclasses.MISSING,
    help: str = "",
    *,
    choices: tuple | None = None,
    cli: bool = True,
    factory=None,
    aliases: tuple[str, ...] = (),
):
    """A config field whose metadata also describes its command-line flag (help, choices, extra flag aliases; cli=False hides it)."""
    meta = {"help": help, "choices": choices, "cli": cli, "aliases": aliases}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


SAE_NEEDS = {"alpha": "penalty", "penalty_decoder_norm": "penalty", "k_aux": "auxk", "aux_coef": "auxk"}
TRAIN_NEEDS = {"decay_fraction": "decay", "converge_tol": "until_converged", "converge_window": "until_converged"}


def _check_no_effect(cfg, needs: dict[str, str], given: dict[str, Any]) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for name, switch in needs.items():
        value = getattr(cfg, name)
        if name in given and getattr(cfg, switch) in (None, False, "none") and value != defaults[name]:
            raise ConfigError(name, value, f"has no effect without {switch}; set {switch} or leave {name} out")


def require_positive_int(name: str, value) -> None:
    """Raise ConfigError naming `name` unless `value` is an integer ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, value, "must be an integer ≥ 1")


def _nonneg_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(name, value, "must be an integer ≥ 0")


def _finite(name: str, value, minimum: float | None = None, strict: bool = False) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(name, value, "must be a number") from None
    if not math.isfinite(v):
        raise ConfigError(name, value, "must be finite")
    if minimum is not None and (v < minimum or (strict and v == minimum)):
        raise ConfigError(name, value, f"must be {'>' if strict else '≥'} {minimum:g}")


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(name, value, f"must be one of {', '.join(choices)}")


def _from_dict(cls, data: dict, where: str):
    return build(cls, data, where)


# Settings that act only through another one: given (a flag or a config-file key) while that one is
# off, they have no effect, which is refused. Only the builders of flags and TOML check this; the
# Python API and a run's own run.json may carry an unused setting (a sweep varying auxk keeps k_aux).
