"""What a sweep records about each SAE: its results row and the evaluations its data source adds (saelab.sources)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from saelab.experiments.grid import PlannedSAE
from saelab.sources.registry import source_of


def _finite(v):
    return v if not isinstance(v, float) or math.isfinite(v) else None


def _row(planned: PlannedSAE, folder: Path, root: Path, record: dict) -> dict[str, Any]:
    """The results.jsonl row of one trained SAE from its saelab.json record (reconstruction part)."""
    cfg = planned.cfg
    saved = record.get("sae", {})
    ev = record.get("eval", {})
    params = {**saved.get("method_params", {}), **saved.get("penalty_params", {})}
    if saved.get("penalty"):
        params.update(penalty=saved["penalty"], alpha=saved.get("alpha"))
    row = {
        "name": planned.name,
        "group": planned.group,
        "method": cfg.method,  # the activation; a penalty and its alpha are in params
        "params": params,
        "n_latents": cfg.n_latents,
        "seed": planned.seed,
        "varied": planned.varied,
        "target_l0": cfg.target_l0,
        "lr": saved.get("lr") or cfg.effective_lr,
        "l0": ev.get("l0"),
        "l0_eps": ev.get("l0_eps"),
        "eps_l0": ev.get("eps_l0"),
        **({"l0_level": ev["l0_level"], "level": ev.get("level")} if ev.get("l0_level") is not None else {}),
        "nmse": ev.get("nmse"),
        "mse": ev.get("mse"),
        "explained_variance": ev.get("explained_variance"),
        "cos_sim": ev.get("cos_sim"),
        "dead_fraction": ev.get("dead_fraction"),
        "dead_fraction_eps": ev.get("dead_fraction_eps"),
        "dense_fraction": ev.get("dense_fraction"),
        "tokens": record.get("tokens"),
        "steps": record.get("steps"),
        "flops": record.get("flops"),
        "folder": str(folder.relative_to(root)),
        "init_hash": record.get("init_hash"),  # distinct seeds: distinct initial weights ...
        "data_order_hash": record.get("data_order_hash"),  # ... and distinct batch orders
        "ci": dict(ev.get("ci") or {}),
        # The row-block bootstrap's SE of NMSE (issue 31: comparisons add each SAE's evaluation noise).
        "nmse_eval_se": _ci_se((ev.get("ci") or {}).get("nmse")),
    }
    if record.get("target_l0"):
        row["coefficient"] = record["target_l0"]
    if record.get("convergence"):
        row["tokens_to_convergence"] = record.get("tokens_to_convergence")  # None: the budget ran out first
    return {k: _finite(v) for k, v in row.items()}


def _ci_se(ci) -> float | None:
    """Standard error read off a 95% bootstrap interval dict: (hi − lo) / (2 · 1.96); None without one."""
    if not isinstance(ci, dict) or ci.get("lo") is None or ci.get("hi") is None:
        return None
    return (float(ci["hi"]) - float(ci["lo"])) / (2.0 * 1.959963984540054)


class Evaluators:
    """The evaluations beyond reconstruction that the data's source adds to each row, set up once per sweep and shared by every SAE."""

    def __init__(self, source: dict | None, options: dict[str, Any], say: Callable[[str], None]):
        found = source_of(source)
        self._evaluate = found.sweep_evaluator(source, options, say) if found is not None else None

    def extra(self, sae, folder: Path) -> dict[str, Any]:
        """Every evaluation beyond reconstruction that this source and the [eval] options call for."""
        return self._evaluate(sae, folder) if self._evaluate is not None else {}
