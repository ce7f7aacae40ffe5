"""Reading methods at a target L0 off their frontiers, the nearest setting to a target, and rank agreement with a paper."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.stats import rankdata, spearmanr

from saelab.errors import ConfigError, DataError
from saelab.experiments.reproduce.claims import Evidence

# Every seed's L0 above ε within ±10% of the target: on our model TopK at k 24 / 32 / 40 finds 20 / 30 / 30
# pairs, so the old ±25% on the mean was a large effect by itself (issue 31 item 4).
from saelab.experiments.reproduce.measures import _positive, frontier_value, group, group_difference
from saelab.util.comparisons import seeds_test
from saelab.util.intervals import Interval


def frontier_difference(
    sweep: str, a: list[str], b: list[str], key: str, target: float, transform: Callable[[float], float] | None = None
) -> Callable[[Evidence], Interval]:
    """A measure: key(a) − key(b) on each grid's frontier at L0 above ε = target, paired by seed (shared batches).

    t over the seeds' differences, widened by both sides' evaluation SEs (seeds_test). With a
    `transform` the SEs are unknown (the bootstrap was of the untransformed metric).
    """

    def measure(ev: Evidence) -> Interval:
        rows = ev.sweep(sweep)
        if transform is not None:
            rows = [
                {**r, key: transform(r[key]), "ci": {}, key + "_eval_se": None} if _positive(r.get(key)) else r
                for r in rows
            ]
        va, vb = frontier_value(rows, a, key, target, with_se=True), frontier_value(rows, b, key, target, with_se=True)
        seeds = sorted(set(va) & set(vb))
        if not seeds:
            raise DataError(f"no seed has both {a[0]!r} and {b[0]!r}")
        se = [None if va[s][1] is None or vb[s][1] is None else math.hypot(va[s][1], vb[s][1]) for s in seeds]
        return seeds_test([va[s][0] - vb[s][0] for s in seeds], se)

    return measure


def against_extreme_other(sweep: str, a: str, others: list[str], key: str, pick: str) -> Callable[[Evidence], Interval]:
    """A measure: metric(a) − metric(o), o the other configuration with the largest (pick "max") or smallest ("min") mean.

    "a has the most good classifiers of all" is a − (the best of the rest) > 0; "a is the sparsest"
    is L0(a) − (the sparsest of the rest) < 0. Welch t over seeds between a and that one. Meant for
    searched settings: wherever their coefficients ended, nothing abstains for a missed target L0.
    """
    if pick not in ("max", "min"):
        raise ConfigError("pick", pick, "must be 'max' or 'min'")

    def measure(ev: Evidence) -> Interval:
        rows = ev.sweep(sweep)
        means = {}
        for name in others:
            est = group(rows, name).estimate(key)
            if est is None:
                raise DataError(f"{name!r} has no {key!r}")
            means[name] = est
        other = (max if pick == "max" else min)(means, key=means.get)
        return group_difference(rows, a, other, key, targets=False)

    return measure


def rank_correlation(
    sweep: str, reference: dict[str, float], key: str, n_boot: int = 2000, seed: int = 0
) -> Callable[[Evidence], Interval]:
    """A measure: Spearman ρ between a paper's figure per configuration and our mean `key`, with an exact permutation p.

    p is one-sided (ρ > 0: the rankings agree beyond chance), exact over every pairing of the
    configurations (8! = 40,320 for the report's methods). The interval resamples each
    configuration's seeds (a percentile bootstrap of ρ of the means): it shows ρ's stability, not
    agreement; the verdict reads p.
    """
    names = list(reference)
    if len(names) < 3:
        raise DataError(f"a rank correlation needs ≥ 3 configurations, got {len(names)}")

    def measure(ev: Evidence) -> Interval:
        rows = ev.sweep(sweep)
        per = []
        for name in names:
            g = group(rows, name)
            vals = g.values.get(key)
            if not vals:
                raise DataError(f"{name!r} has no {key!r}")
            per.append(np.asarray(vals, dtype=np.float64))
        ref = np.asarray([reference[n] for n in names], dtype=np.float64)
        ours = np.asarray([v.mean() for v in per])
        est, p = spearman(ref, ours), spearman_permutation_p(ref, ours)
        if min(len(v) for v in per) < 2:
            return Interval(est, est, est, len(names), "single", p=p)
        rng = np.random.default_rng(seed)
        boots = [spearman(ref, np.asarray([rng.choice(v, size=len(v)).mean() for v in per])) for _ in range(n_boot)]
        lo, hi = np.percentile(boots, [2.5, 97.5])
        return Interval(
            est,
            float(min(lo, est)),
            float(max(hi, est)),
            len(names),
            "bootstrap-seeds; p exact permutation, one-sided",
            p=p,
        )

    return measure


def spearman_permutation_p(x: np.ndarray, y: np.ndarray) -> float:
    """Exact one-sided p of Spearman ρ(x, y) > 0: the share of all n! pairings whose ρ is at least the observed one."""
    from scipy.stats import permutation_test

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size > 10:
        raise DataError(f"an exact permutation test over {x.size}! pairings is too large; at most 10 configurations")
    rx = rankdata(x)

    def rho(yy, axis=-1):
        ry = rankdata(yy, axis=axis)
        rc, xc = ry - ry.mean(axis=axis, keepdims=True), rx - rx.mean()
        den = np.sqrt((rc**2).sum(axis=axis) * (xc**2).sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (rc * xc).sum(axis=axis) / np.where(den > 0, den, 1.0), 0.0)

    res = permutation_test(
        (y,), rho, permutation_type="pairings", alternative="greater", n_resamples=np.inf, vectorized=True
    )
    return float(res.pvalue)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their average rank; 0 when either side is constant)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0  # scipy says nan: no ranking to agree with
    return float(spearmanr(x, y).statistic)
