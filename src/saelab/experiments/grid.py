"""Sweep grids: a `saelab train` TOML whose SAE parameters may be lists, expanded into concrete SAEs.

Rule: within one `[[sae]]` table (merged over the top-level SAE defaults), every list-valued SAE
key (`n_latents`, `method`, `target_l0`, `lr`, `alpha`, any method or penalty parameter such as
`k`) expands as a full product. Keys named in `zip = [...]` (top level or in the table) are
instead zipped: their lists must have one length and vary together, and that zipped axis is
crossed with the other lists. The top-level `seed` may be a list too: every SAE is trained once
per seed (each seed is one data order and one initialization, shared by the SAEs of that seed).
Training keys other than `seed` never expand (`betas = [0.9, 0.999]` stays a pair).
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from saelab.config import TRAIN_FIELDS, SAEConfig
from saelab.errors import ConfigError
from saelab.methods.mapping import sae_from_flat
from saelab.methods.resolve import display_name, resolve_sae

SWEEP_ONLY = ("zip", "eval", "sae", "seed")


@dataclass
class PlannedSAE:
    """One concrete SAE of a sweep: its config, the seed it trains under and its names."""

    cfg: SAEConfig
    seed: int
    group: str  # the configuration without the seed: what seeds are averaged over
    name: str  # group plus the seed: unique in the sweep
    varied: dict[str, Any] = field(default_factory=dict)  # the expanded values that made it


@dataclass
class SweepPlan:
    """The expanded sweep: training keys, every SAE, the seeds and the [eval] options."""

    train: dict[str, Any]
    saes: list[PlannedSAE]
    seeds: list[int]
    eval: dict[str, Any]

    def by_seed(self) -> dict[int, list[PlannedSAE]]:
        """SAEs grouped by seed (the SAEs of one seed share batches)."""
        out: dict[int, list[PlannedSAE]] = {}
        for s in self.saes:
            out.setdefault(s.seed, []).append(s)
        return out


def _as_list(value) -> list:
    return list(value) if isinstance(value, list) else [value]


def _slug(value) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "", f"{value:g}" if isinstance(value, float) else str(value))


def expand_table(table: dict[str, Any], zip_keys: list[str]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """All (flat SAE mapping, varied values) a merged table expands to, in a stable order."""
    lists = {k: v for k, v in table.items() if isinstance(v, list) and k not in ("zip",)}
    for k, v in lists.items():
        if not v:
            raise ConfigError(k, v, "an empty list expands to no SAE")
    zipped = [k for k in zip_keys if k in lists]
    unknown = [k for k in zip_keys if k not in table]
    if unknown:
        raise ConfigError("zip", zip_keys, f"names {unknown[0]!r}, which this SAE table does not set")
    if zipped:
        lengths = {k: len(lists[k]) for k in zipped}
        if len(set(lengths.values())) > 1:
            raise ConfigError("zip", zip_keys, f"zipped lists differ in length: {lengths}")
    crossed = [k for k in lists if k not in zipped]
    axes = (
        [[tuple((k, v) for k, v in zip(zipped, vals)) for vals in zip(*(lists[k] for k in zipped))]] if zipped else []
    )
    axes += [[((k, v),) for v in lists[k]] for k in crossed]
    out = []
    for combo in itertools.product(*axes) if axes else [()]:
        varied = dict(kv for part in combo for kv in part)
        flat = {**{k: v for k, v in table.items() if k != "zip"}, **varied}
        out.append((flat, varied))
    return out


def plan_sweep(data: dict[str, Any]) -> SweepPlan:
    """Expand a sweep mapping (TOML-shaped) into concrete SAEs; each is validated now."""
    data = copy.deepcopy(data)
    if not isinstance(data, dict):
        raise ConfigError("sweep", type(data).__name__, "a sweep config is a TOML table")
    tables = data.pop("sae", None)
    eval_opts = data.pop("eval", {}) or {}
    if not isinstance(eval_opts, dict):
        raise ConfigError("eval", eval_opts, "must be a table: [eval]")
    top_zip = data.pop("zip", [])
    seeds = _as_list(data.pop("seed", 0))
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError("seed", s, "must be an integer ≥ 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError("seed", seeds, "lists a seed twice")
    train = {k: data.pop(k) for k in list(data) if k in TRAIN_FIELDS}
    shared = data
    if tables is None:
        tables = [{}]
    if isinstance(tables, dict):
        tables = [tables]
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError("sae", tables, "must be one or more [[sae]] tables")
    saes: list[PlannedSAE] = []
    for table in tables:
        merged = {**shared, **table}
        zip_keys = _as_list(table.get("zip", top_zip))
        base = merged.pop("name", None)
        for flat, varied in expand_table(merged, zip_keys):
            cfg = sae_from_flat(flat)
            if base:
                shown = varied
            else:  # display_name already spells the method, its parameters, the penalty and alpha
                named = {"method", "penalty", "alpha", *cfg.method_params, *cfg.penalty_params}
                shown = {k: v for k, v in varied.items() if k not in named}
            suffix = "_".join(f"{k}{_slug(v)}" for k, v in shown.items())
            stem = base or display_name(cfg)
            group = f"{stem}_{suffix}" if suffix else stem
            for seed in seeds:
                c = copy.deepcopy(cfg)
                c.name = f"{group}-s{seed}"
                c = resolve_sae(c)
                saes.append(PlannedSAE(c, int(seed), group, c.name, varied))
    names = [s.name for s in saes]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(
            "name", dup[0], "two SAEs of the sweep share this name; give each [[sae]] table a distinct `name`"
        )
    return SweepPlan(train=train, saes=saes, seeds=[int(s) for s in seeds], eval=eval_opts)


def memory_estimate(cfg: SAEConfig, d_in: int, batch_size: int) -> int:
    """Bytes to train one SAE: weights, gradients and two Adam moments (fp32), plus dense [B, n] temporaries."""
    n = cfg.n_latents
    params = 2 * d_in * n + n + d_in
    return 4 * params * 4 + 4 * batch_size * n * 4


def pack_by_memory(saes: list[PlannedSAE], d_in: int, batch_size: int, budget: int) -> list[list[PlannedSAE]]:
    """Split SAEs (in order) into consecutive groups whose estimated memory fits `budget` (one SAE per group at least)."""
    groups: list[list[PlannedSAE]] = []
    used = 0
    for s in saes:
        need = memory_estimate(s.cfg, d_in, batch_size)
        if groups and used + need <= budget:
            groups[-1].append(s)
            used += need
        else:
            groups.append([s])
            used = need
    return groups


# Step time per B·d·n of the sparse TopK path relative to a dense step (every [B, n] product done in
# full), measured on a spread OthelloGPT sweep here (d 128, batch 2,048, one thread per rank): ≈ 64 µs
# per latent per step for TopK (AuxK on, no latent dead yet) against ≈ 210 µs for ReLU+L1.
SPARSE_STEP_SHARE = 0.3
# AuxK's extra decode and gradients run only while latents are dead: ≈ +0.9 of the sparse step at 30 %
# dead (bench/README.md), nothing with none; a quarter is a guess at the average over a run.
AUXK_STEP_SHARE = 0.25
# A ReLU code trains on the sparse kernels once it is sparse (objective.RELU_SPARSE_MAX_DENSITY), on the
# dense path before: ReLU+L1 at target L0 32 (1,024 latents) took 0.73 of the dense time over its first
# 600 steps, ≈ 0.35 once sparse (bench/dense_step.py --relu-density); half is a guess at a run's average.
RELU_STEP_SHARE = 0.5


def step_cost_estimate(cfg: SAEConfig, d_in: int, batch_size: int) -> float:
    """Relative time of one training step of `cfg`: B·d·n, less where the sparse kernels apply (TopK family 0.3, ReLU 0.5)."""
    from saelab.methods import sparse_plan_for

    work = float(batch_size) * d_in * cfg.n_latents
    plan = sparse_plan_for(cfg)
    if plan is None:
        return work
    return (
        work * (RELU_STEP_SHARE if plan.positive else SPARSE_STEP_SHARE) * (1 + (AUXK_STEP_SHARE if cfg.auxk else 0.0))
    )


def spread_over_ranks(
    saes: list[PlannedSAE], d_in: int, batch_size: int, ranks: int, cost=step_cost_estimate
) -> list[list[PlannedSAE]]:
    """Deal SAEs to `ranks` lists of about equal `cost` (estimated step time by default), each in plan order."""
    if ranks < 1:
        raise ConfigError("ranks", ranks, "must be ≥ 1")
    load, dealt = [0.0] * ranks, [[] for _ in range(ranks)]
    weights = [cost(s.cfg, d_in, batch_size) for s in saes]
    # Largest first, each to the least-loaded rank (ties: the lower rank), so big SAEs do not pile up.
    order = sorted(range(len(saes)), key=lambda i: -weights[i])
    for i in order:
        r = min(range(ranks), key=lambda j: (load[j], j))
        load[r] += weights[i]
        dealt[r].append(i)
    return [[saes[i] for i in sorted(idx)] for idx in dealt]
