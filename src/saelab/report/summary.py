"""Aggregate sweep rows across seeds by group (mean and 95% interval of every metric) and compare groups at matched L0."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from saelab.errors import DataError
from saelab.util.comparisons import Comparison, adjust_family, compare_seeds
from saelab.util.intervals import Interval, normal_quantile, seeds_interval

L0_TOLERANCE = 0.10  # groups without a shared target_l0 are matched when their mean L0 differ by at most 10%
EVAL_SE = "_eval_se"  # a row's `<metric>_eval_se`: the metric's standard error from its own evaluation's resampling
FAMILY_ALPHA = 0.05  # family-wise error rate of the matched comparisons (Holm)


@dataclass(frozen=True)
class MetricSpec:
    """A metric column: its key in results.jsonl, a readable label, and which direction is better."""

    key: str
    label: str
    higher_is_better: bool | None  # None: descriptive (L0, ...), summarized but never compared


KNOWN_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("l0", "L0", None),
    MetricSpec("l0_eps", "L0 (>ε)", None),
    MetricSpec("nmse", "NMSE", False),
    MetricSpec("dead_fraction", "dead fraction", False),
    MetricSpec("dead_fraction_eps", "dead above ε", False),
    MetricSpec("good_classifiers", "good classifiers", True),
    MetricSpec("good_findable", "good / findable", True),
    MetricSpec("coverage", "coverage", True),
    MetricSpec("ce_recovered_zero", "CE recovered", True),
    MetricSpec("kl", "KL", False),
    MetricSpec("ce_sae", "CE with SAE", False),
    MetricSpec("ce_delta", "CE increase", False),
    MetricSpec("mmcs", "MMCS", True),
)

# Identity and bookkeeping fields: numbers that describe the run, not its quality.
NOT_METRICS = frozenset(
    {
        "name",
        "group",
        "method",
        "params",
        "n_latents",
        "seed",
        "tokens",
        "folder",
        "target_l0",
        "ci",
        "label",
        "d_in",
        "lr",
        "steps",
        "batch_size",
        "epochs",
    }
)


def metric_specs(rows: Sequence[dict]) -> list[MetricSpec]:
    """The metrics present (non-null in some row): known ones in their fixed order, then other numeric keys by name."""
    present = {
        k for r in rows for k, v in r.items() if _is_number(v) and k not in NOT_METRICS and not k.endswith(EVAL_SE)
    }
    known = [m for m in KNOWN_METRICS if m.key in present]
    names = {m.key for m in KNOWN_METRICS}
    return known + [MetricSpec(k, k, None) for k in sorted(present - names)]


def spec_for(key: str) -> MetricSpec:
    """The MetricSpec of a key (descriptive when unknown)."""
    return next((m for m in KNOWN_METRICS if m.key == key), MetricSpec(key, key, None))


@dataclass(frozen=True)
class GroupSummary:
    """One configuration across its seeds: per-seed values and the interval shown for each metric."""

    group: str
    method: str
    params: dict
    n_latents: int | None
    target_l0: float | None
    names: tuple[str, ...]
    seeds: tuple
    metrics: dict[str, Interval] = field(default_factory=dict)
    values: dict[str, tuple[float, ...]] = field(default_factory=dict)  # per-seed values, for Welch comparisons
    eval_se: dict[str, tuple[float | None, ...]] = field(default_factory=dict)  # per-seed evaluation SE (None: unknown)

    @property
    def n_seeds(self) -> int:
        """Number of SAEs (seeds) in the group."""
        return len(self.names)

    def estimate(self, key: str) -> float | None:
        """The metric's central value, or None when no seed has it."""
        iv = self.metrics.get(key)
        return None if iv is None else iv.estimate

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return {
            "group": self.group,
            "method": self.method,
            "params": self.params,
            "n_latents": self.n_latents,
            "target_l0": self.target_l0,
            "n_seeds": self.n_seeds,
            "names": list(self.names),
            "seeds": list(self.seeds),
            "metrics": {k: iv.to_dict() for k, iv in self.metrics.items()},
        }


def summarize(rows: Sequence[dict]) -> list[GroupSummary]:
    """One GroupSummary per `group`, sorted by method then mean L0.

    A metric with values from >= 2 seeds gets a Student-t interval over seeds; from a single
    seed, that row's own `ci` entry (a bootstrap over its evaluation data) when it has one,
    else a point estimate (interval method "single").
    """
    by_group: dict[str, list[dict]] = {}
    for r in rows:
        by_group.setdefault(str(r["group"]), []).append(r)
    specs = metric_specs(rows)
    out = []
    for group, members in by_group.items():
        methods = sorted({str(r.get("method")) for r in members})
        if len(methods) > 1:
            raise DataError(
                f"group {group!r} mixes methods {', '.join(methods)}: seeds of one configuration share a method"
            )
        members = sorted(
            members,
            key=lambda r: (r.get("seed") is None, r.get("seed") if _is_number(r.get("seed")) else 0, str(r["name"])),
        )
        metrics, values, eval_se = {}, {}, {}
        for spec in specs:
            have = [r for r in members if _is_number(r.get(spec.key))]
            if not have:
                continue
            vals = tuple(float(r[spec.key]) for r in have)
            values[spec.key] = vals
            eval_se[spec.key] = tuple(row_eval_se(r, spec.key) for r in have)
            metrics[spec.key] = _row_interval(have[0], spec.key) if len(have) == 1 else seeds_interval(list(vals))
        targets = [float(r["target_l0"]) for r in members if _is_number(r.get("target_l0"))]
        out.append(
            GroupSummary(
                group=group,
                method=methods[0],
                params=dict(members[0].get("params") or {}),
                n_latents=members[0].get("n_latents"),
                target_l0=targets[0] if targets else None,
                names=tuple(str(r["name"]) for r in members),
                seeds=tuple(r.get("seed") for r in members),
                metrics=metrics,
                values=values,
                eval_se=eval_se,
            )
        )
    return sorted(out, key=lambda g: (g.method, _nan_last(g.estimate("l0")), g.group))


def _row_interval(row: dict, key: str) -> Interval:
    """A single seed's interval: the row's bootstrap `ci` when present, else the bare value."""
    ci = (row.get("ci") or {}).get(key)
    if ci is None:
        return seeds_interval([float(row[key])])
    if not isinstance(ci, dict):
        raise DataError(
            f"SAE {row.get('name')!r}: ci[{key!r}] is not an interval object {{estimate, lo, hi, n, method}}"
        )
    try:
        return Interval.from_dict(ci)
    except DataError as e:
        raise DataError(f"SAE {row.get('name')!r}: ci[{key!r}]: {e}") from None


def row_eval_se(row: dict, key: str) -> float | None:
    """A row's evaluation SE of `key`: its `<key>_eval_se`, else its 95% bootstrap `ci` width / (2·1.96), else None."""
    v = row.get(key + EVAL_SE)
    if _is_number(v) and v >= 0:
        return float(v)
    ci = (row.get("ci") or {}).get(key)
    if isinstance(ci, dict) and _is_number(ci.get("lo")) and _is_number(ci.get("hi")) and ci["hi"] >= ci["lo"]:
        return float(ci["hi"] - ci["lo"]) / (2.0 * normal_quantile(0.95))
    return None


@dataclass(frozen=True)
class MatchedComparison:
    """One metric compared between two groups whose L0 is matched."""

    metric: str
    basis: str  # why the pair counts as matched, e.g. "target L0 32" or "L0 31.5 vs 33.0"
    comparison: Comparison

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return {"metric": self.metric, "basis": self.basis, **self.comparison.to_dict()}


def l0_match(a: GroupSummary, b: GroupSummary, tolerance: float = L0_TOLERANCE) -> str | None:
    """Why a and b are L0-matched (a short text), or None when they are not.

    Both with a target_l0: matched when the targets are equal. Otherwise their mean L0 must
    lie within ±tolerance of each other (each within tolerance of the other, so it is symmetric).
    """
    if a.target_l0 is not None and b.target_l0 is not None:
        same = math.isclose(a.target_l0, b.target_l0, rel_tol=1e-9, abs_tol=1e-12)
        return f"target L0 {a.target_l0:g}" if same else None
    la, lb = a.estimate("l0"), b.estimate("l0")
    if la is None or lb is None or la <= 0 or lb <= 0:
        return None
    if abs(la - lb) <= tolerance * min(la, lb):
        return f"L0 {la:.3g} vs {lb:.3g}"
    return None


def compare_metric(a: GroupSummary, b: GroupSummary, spec: MetricSpec) -> Comparison | None:
    """Compare one metric between two groups (None when either lacks it or it has no direction).

    Welch t over seeds widened by each SAE's evaluation SE (compare_seeds). A side with one seed
    is never separable: an interval from one SAE's evaluation noise says nothing about its method
    (float rounding alone moved such a call between CPUs, issue 31 item 9).
    """
    if spec.higher_is_better is None or spec.key not in a.metrics or spec.key not in b.metrics:
        return None
    av, bv = list(a.values[spec.key]), list(b.values[spec.key])
    ae, be = a.eval_se.get(spec.key), b.eval_se.get(spec.key)
    return compare_seeds(av, bv, a.group, b.group, spec.higher_is_better, a_eval_se=ae, b_eval_se=be)


def matched_comparisons(groups: Sequence[GroupSummary], tolerance: float = L0_TOLERANCE) -> list[MatchedComparison]:
    """Every pair of L0-matched groups compared on every directed metric both have, as one Holm-adjusted family."""
    order = {m.key: i for i, m in enumerate(KNOWN_METRICS)}
    keys = sorted({k for g in groups for k in g.metrics}, key=lambda k: (order.get(k, len(order)), k))
    specs = [spec_for(k) for k in keys]
    out = []
    for i, a in enumerate(groups):
        for b in groups[i + 1 :]:
            basis = l0_match(a, b, tolerance)
            if basis is None:
                continue
            for spec in specs:
                c = compare_metric(a, b, spec)
                if c is not None:
                    out.append(MatchedComparison(spec.key, basis, c))
    judged = adjust_family([m.comparison for m in out], FAMILY_ALPHA)
    return [MatchedComparison(m.metric, m.basis, c) for m, c in zip(out, judged)]


def _is_number(v) -> bool:
    """A finite int or float; bools are flags, not measurements."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _nan_last(v: float | None) -> float:
    """Sort key putting groups without the value last."""
    return math.inf if v is None else v
