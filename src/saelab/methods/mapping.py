"""Configs from flags and files: flat keys split between a method and its penalty, TOML tables, run.json, resolved at this edge."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from saelab.config.fields import SAE_NEEDS, TRAIN_NEEDS, _check_no_effect
from saelab.config.values import SAE_FIELDS, TRAIN_FIELDS, RunConfig, SAEConfig, TrainConfig
from saelab.errors import ConfigError
from saelab.methods.registry import activation_class, penalty_class
from saelab.methods.resolve import method_reads_alpha, resolve_run
from saelab.util.config_files import read_config
from saelab.util.typecheck import build, check_fields


def split_method_params(method: str, penalty: str | None, flat: dict[str, Any]) -> tuple[dict, dict]:
    """Assign flat parameters (--k, --eps, …) to the method or the penalty that declares them."""
    act_fields = {f.name for f in dataclasses.fields(activation_class(method).Params)}
    pen_fields = {f.name for f in dataclasses.fields(penalty_class(penalty).Params)} if penalty else set()
    method_params, penalty_params = {}, {}
    for key, value in flat.items():
        if key in act_fields and key in pen_fields:
            raise ConfigError(
                key,
                value,
                f"both method {method!r} and penalty {penalty!r} take it; use method_params / penalty_params in a TOML config",
            )
        if key in act_fields:
            method_params[key] = value
        elif key in pen_fields:
            penalty_params[key] = value
        else:
            used = ", ".join(sorted(act_fields | pen_fields)) or "none"
            owner = f"method {method!r}" + (f" or penalty {penalty!r}" if penalty else "")
            raise ConfigError(key, value, f"not a parameter of {owner} (parameters: {used})")
    return method_params, penalty_params


def sae_from_flat(flat: dict[str, Any]) -> SAEConfig:
    """Build an SAEConfig from flat keys: SAEConfig fields plus method/penalty parameters."""
    flat = check_fields(SAEConfig, dict(flat))  # method parameters pass through; build_params checks them
    if flat.get("n_latents") is None:
        raise ConfigError("n_latents", None, "required")
    core = {k: flat.pop(k) for k in list(flat) if k in SAE_FIELDS}
    method_params = flat.pop("method_params", None) or {}
    penalty_params = flat.pop("penalty_params", None) or {}
    method, penalty = core.get("method", "relu"), core.get("penalty")
    m, p = split_method_params(method, penalty, flat)
    # Checked here as well as when built, so the recorded config holds None where the file said "none".
    method_params = check_fields(activation_class(method).Params, {**method_params, **m}, "method")
    penalty_params = (
        check_fields(penalty_class(penalty).Params, {**penalty_params, **p}, "penalty")
        if penalty
        else {**penalty_params, **p}
    )
    cfg = build(SAEConfig, {**core, "method_params": method_params, "penalty_params": penalty_params})
    needs = {k: v for k, v in SAE_NEEDS.items() if k != "alpha"} if method_reads_alpha(method) else SAE_NEEDS
    _check_no_effect(cfg, needs, core)
    return cfg


def load_toml(path: str | Path, out: str | None = None) -> RunConfig:
    """Read a run config (TOML keys plus [[sae]] tables, or a run's run.json); `out` replaces the file's output folder."""
    data = read_config(path)
    if out is not None:
        (data["train"] if isinstance(data.get("train"), dict) else data)["out"] = out
    return run_from_mapping(data)


def run_from_mapping(data: dict[str, Any]) -> RunConfig:
    """A resolved RunConfig from a TOML-shaped mapping, or from the {train, saes} record a run writes as run.json."""
    if not isinstance(data, dict):
        raise ConfigError("config", type(data).__name__, "must be a table of settings")
    if "train" in data and "saes" in data:
        return resolve_run(RunConfig.from_dict(data))
    data = dict(data)
    sae_tables = data.pop("sae", None)
    train_keys = {k: data.pop(k) for k in list(data) if k in TRAIN_FIELDS}
    shared = data  # whatever is left is an SAE default (n_latents, method, k, …)
    if sae_tables is None:
        sae_tables = [{}]
    if isinstance(sae_tables, dict):
        sae_tables = [sae_tables]
    if not isinstance(sae_tables, list) or not all(isinstance(t, dict) for t in sae_tables):
        raise ConfigError("sae", sae_tables, "must be a [sae] table or a list of [[sae]] tables")
    train = build(TrainConfig, train_keys)
    _check_no_effect(train, TRAIN_NEEDS, train_keys)
    saes = [sae_from_flat({**shared, **table}) for table in sae_tables]
    return resolve_run(RunConfig(train, saes))
