"""From an SAEConfig's method fields to what the model builds: activation and penalty with checked Params, the knob, k from target_l0."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from saelab.config.values import RunConfig, SAEConfig
from saelab.errors import ConfigError
from saelab.methods.base import SparsityKnob
from saelab.methods.registry import activation_class, build_params, penalty_class
from saelab.util.names import check_member_names


@dataclass(frozen=True)
class Resolved:
    """An SAE's sparsity parts: (Activation class, Params), (Penalty class, Params) or None, and the knob target_l0 moves."""

    activation: tuple[type, Any]
    penalty: tuple[type, Any] | None
    knob: SparsityKnob | None


# Built Params by (class, field, JSON of the given dict), so that one setting builds one Params object
# (shared by an SAE, its sparse plan and a sweep's cost estimate). Not for speed: measured here, a build
# takes ≈ 45 µs and the keyed lookup ≈ 30 µs, once per SAE built. Params are replaced, never changed in place.
_BUILT: dict[tuple, Any] = {}
_BUILT_MAX = 512


def _params(cls: type, given: dict[str, Any], field: str):
    try:
        key = (cls, field, json.dumps(given, sort_keys=True, default=str))
    except TypeError:  # keys of mixed types: build_params names the bad one
        return build_params(cls, given, field)
    params = _BUILT.get(key)
    if params is None:
        params = build_params(cls, given, field)
        if len(_BUILT) >= _BUILT_MAX:
            _BUILT.clear()
        _BUILT[key] = params
    return params


def sparsity_knob(cfg) -> SparsityKnob | None:
    """The SparsityKnob target_l0 adapts: the penalty's alpha, the method's own, or None (k-budgeted methods)."""
    if cfg.penalty is not None:
        return penalty_class(cfg.penalty).sparsity_knob
    return activation_class(cfg.method).sparsity_knob


def method_reads_alpha(method: str) -> bool:
    """Whether the activation `method` weights its own sparsity loss by alpha (Gated), so alpha acts without a penalty."""
    knob = activation_class(method).sparsity_knob
    return knob is not None and knob.param == "alpha"


def resolve(cfg) -> Resolved:
    """Build and check `cfg`'s method and penalty (an SAEConfig or an SAE's cfg view); raise ConfigError naming the bad field."""
    act_cls = activation_class(cfg.method)
    params = _params(act_cls, cfg.method_params, "method")
    pen = None
    if cfg.penalty is not None:
        pen_cls = penalty_class(cfg.penalty)
        pen = (pen_cls, _params(pen_cls, cfg.penalty_params, "penalty"))
    for k in (getattr(params, "k", None), getattr(pen[1], "k", None) if pen else None):
        if k is not None and k > cfg.n_latents:
            raise ConfigError("k", k, f"larger than n_latents={cfg.n_latents}")
    if pen is not None and method_reads_alpha(cfg.method):
        raise ConfigError(
            "penalty", cfg.penalty, f"method {cfg.method!r} weights its own sparsity loss by alpha; it takes no penalty"
        )
    return Resolved((act_cls, params), pen, sparsity_knob(cfg))


def with_target_k(cfg: SAEConfig) -> SAEConfig:
    """`cfg` with k set from target_l0 for a method that has a k but no knob (the TopK family): a new config, or `cfg` unchanged."""
    if cfg.target_l0 is None or sparsity_knob(cfg) is not None:
        return cfg
    if "k" not in {f.name for f in dataclasses.fields(activation_class(cfg.method).Params)}:
        raise ConfigError(
            "target_l0",
            cfg.target_l0,
            f"method {cfg.method!r} without a penalty has no coefficient, threshold or k that sets its sparsity",
        )
    k = max(1, int(round(cfg.target_l0)))
    if cfg.method_params.get("k", k) != k:
        raise ConfigError(
            "k",
            cfg.method_params["k"],
            f"conflicts with target_l0={cfg.target_l0:g} (which sets k={k}); give one of them",
        )
    if cfg.method_params.get("k") == k:
        return cfg
    return dataclasses.replace(cfg, method_params={**cfg.method_params, "k": k})


def resolve_sae(cfg: SAEConfig) -> SAEConfig:
    """Check every field of `cfg`, its method fields included; return it with target_l0's k set (a new config when one is set)."""
    cfg = with_target_k(cfg.validate())
    resolve(cfg)
    return cfg


def resolve_run(run: RunConfig) -> RunConfig:
    """`run` with each SAE resolved (a new RunConfig; the input is not changed) and every SAE's name a distinct folder name."""
    run.validate()
    resolved = dataclasses.replace(run, saes=[resolve_sae(s) for s in run.saes])
    check_member_names([display_name(s) for s in resolved.saes])
    return resolved


def display_name(cfg) -> str:
    """`name`, or one made from the method and its parameters."""
    if cfg.name:
        return cfg.name
    parts = [cfg.method] + [f"{k}{v}" for k, v in sorted(cfg.method_params.items())]
    if cfg.penalty:
        parts += [cfg.penalty] + [f"{k}{v}" for k, v in sorted(cfg.penalty_params.items())]
        parts.append(f"a{cfg.alpha:g}")
    elif method_reads_alpha(cfg.method):
        parts.append(f"a{cfg.alpha:g}")
    return "-".join(str(p) for p in parts).replace("/", "_")
