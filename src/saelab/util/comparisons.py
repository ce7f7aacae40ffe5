"""Comparisons of two configurations: seed-and-evaluation intervals, p-values, and Holm families."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist

import numpy as np

from saelab.errors import DataError
from saelab.util.intervals import (
    NOT_SEPARABLE,
    Interval,
    _apply_stat,
    _as_values,
    _check_level,
    _check_n_boot,
    _finite_or_none,
    _parts_matrix,
    _percentiles,
    _replicate_sums,
    _split,
    normal_quantile,
)


@dataclass(frozen=True)
class Comparison:
    """metric(a) - metric(b) with its interval, p-value and the verdict it supports."""

    a: str
    b: str
    diff: float
    lo: float
    hi: float
    higher_is_better: bool
    method: str
    verdict: str
    p: float = 1.0  # two-sided p-value of diff = 0 (1.0 when nothing was measured to separate by)
    p_adjusted: float | None = None  # after a family-wise correction (holm); the verdict then reads it

    def separable(self) -> bool:
        """Whether the verdict names a winner."""
        return self.verdict != NOT_SEPARABLE

    def to_dict(self) -> dict:
        """JSON-safe dict; non-finite numbers (e.g. an unbounded interval) become None."""
        return {
            "a": self.a,
            "b": self.b,
            "diff": _finite_or_none(self.diff),
            "lo": _finite_or_none(self.lo),
            "hi": _finite_or_none(self.hi),
            "higher_is_better": bool(self.higher_is_better),
            "method": self.method,
            "verdict": self.verdict,
            "p": _finite_or_none(self.p),
            "p_adjusted": None if self.p_adjusted is None else _finite_or_none(self.p_adjusted),
        }


def _verdict(a: str, b: str, lo: float, hi: float, higher_is_better: bool) -> str:
    """ "a beats b" only when [lo, hi] of metric(a) - metric(b) excludes zero in a's favour."""
    if lo > 0.0:  # NaN compares False, so an unknown interval is never separable
        return f"{a} beats {b}" if higher_is_better else f"{b} beats {a}"
    if hi < 0.0:
        return f"{b} beats {a}" if higher_is_better else f"{a} beats {b}"
    return NOT_SEPARABLE


def _comparison(
    a: str, b: str, diff: float, lo: float, hi: float, higher_is_better: bool, method: str, p: float | None = None
) -> Comparison:
    """Build a Comparison with its verdict (p: the test's own p-value, else read from the interval)."""
    if p is None:
        p = p_from_interval(diff, lo, hi)
    return Comparison(
        str(a),
        str(b),
        float(diff),
        float(lo),
        float(hi),
        bool(higher_is_better),
        method,
        _verdict(str(a), str(b), lo, hi, higher_is_better),
        float(p),
    )


def p_from_interval(estimate: float, lo: float, hi: float, null: float = 0.0, level: float = 0.95) -> float:
    """Two-sided p of estimate = null from a `level` interval (normal approximation, the half toward null as its z-width).

    p < 1 − level exactly when the interval excludes null. An unbounded, unknown or zero-width
    interval gives 1.0: no spread was measured, so nothing can be separated by it.
    """
    z = normal_quantile(level)
    if not all(math.isfinite(v) for v in (estimate, lo, hi)):
        return 1.0
    half = (estimate - lo) if estimate >= null else (hi - estimate)
    if half <= 0.0:
        return 1.0
    return float(min(1.0, 2.0 * NormalDist().cdf(-abs(estimate - null) / (half / z))))


def _eval_variance(eval_se: Sequence[float | None] | None, n: int, field: str) -> float | None:
    """Mean squared evaluation SE over a side's seeds; None when any seed lacks one."""
    if eval_se is None:
        return None
    ses = list(eval_se)
    if len(ses) != n:
        raise DataError(f"{field}: {len(ses)} evaluation SEs for {n} seeds")
    if any(v is None for v in ses):
        return None
    arr = _as_values(ses, field)
    if (arr < 0).any():
        raise DataError(f"{field}: evaluation SE {float(arr[arr < 0][0])!r} is negative")
    return float(np.mean(arr**2))


def seed_eval_variance(
    values: Sequence[float], eval_se: Sequence[float | None] | None = None, field: str = "values"
) -> tuple[float, float, float | None]:
    """(mean, between-seed variance of the mean, evaluation variance of the mean or None) of one side."""
    v = _as_values(values, field)
    seed_var = float(v.var(ddof=1)) / v.size if v.size >= 2 else math.nan
    if seed_var < (1e-12 * float(np.abs(v).max())) ** 2:
        seed_var = 0.0  # equal seeds up to float rounding (0.1 three times has variance 1e-35)
    return float(v.mean()), seed_var, _eval_variance(eval_se, v.size, f"{field} eval SE")


def compare_seeds(
    a_values: Sequence[float],
    b_values: Sequence[float],
    a: str,
    b: str,
    higher_is_better: bool,
    level: float = 0.95,
    a_eval_se: Sequence[float | None] | None = None,
    b_eval_se: Sequence[float | None] | None = None,
) -> Comparison:
    """Welch t interval of mean(a) − mean(b) over seeds, widened by each side's evaluation noise; with its p-value.

    Each side's variance of the mean is s²/n (between seeds) + ē² (the mean squared evaluation SE
    of its seeds, `*_eval_se`): every seed of a sweep is scored on the same held-out games/rows, so
    their evaluation errors are shared and do not average out over seeds, and s² cannot see them.
    Degrees of freedom: Welch–Satterthwaite with the evaluation term as known (its bootstrap SE is
    precise); the interval is the wider of that one and the seed-only Welch interval, and p the
    larger of their p-values, so adding evaluation noise can only widen it.
    Never zero width: fewer than 2 seeds on a side, or a side whose seeds all agree with no
    evaluation SE recorded (its noise was not measured), or no spread at all, gives an unbounded
    interval and p = 1 (not separable) — three equal seeds do not mean no noise.
    """
    level = _check_level(level)
    ma, sa, ea = seed_eval_variance(a_values, a_eval_se, f"compare_seeds {a}")
    mb, sb, eb = seed_eval_variance(b_values, b_eval_se, f"compare_seeds {b}")
    diff = ma - mb
    method = "welch-t+eval" if ea is not None and eb is not None else "welch-t"
    unbounded = _comparison(a, b, diff, -math.inf, math.inf, higher_is_better, method, p=1.0)
    if not (math.isfinite(sa) and math.isfinite(sb)):
        return unbounded  # one seed: no spread between seeds was measured
    if (sa == 0.0 and ea is None) or (sb == 0.0 and eb is None):
        return unbounded  # equal seeds and no evaluation SE: this side's noise is unknown, not nil
    va, vb = sa + (ea or 0.0), sb + (eb or 0.0)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return unbounded
    na, nb = len(list(a_values)), len(list(b_values))
    den = sa**2 / (na - 1) + sb**2 / (nb - 1)
    half, p = _t_test(
        diff,
        [
            (se**2, (va + vb) ** 2 / den if den > 0.0 else math.inf),
            (sa + sb, (sa + sb) ** 2 / den if den > 0.0 else math.inf),
        ],
        level,
    )
    return _comparison(a, b, diff, diff - half, diff + half, higher_is_better, method, p=p)


def _t_test(estimate: float, variants: list[tuple[float, float]], level: float) -> tuple[float, float]:
    """(half-width, p of estimate = 0): the widest t interval and largest p over (variance, df) variants with variance > 0."""
    # scipy is imported only once an interval is computed: importing this module stays cheap.
    from scipy.stats import t as student_t

    half, p = 0.0, 0.0
    for var, df in variants:
        if var > 0.0:
            se = math.sqrt(var)
            half = max(half, float(student_t.ppf(0.5 + level / 2.0, df)) * se)
            p = max(p, float(2.0 * student_t.sf(abs(estimate) / se, df)))
    return half, p


def seeds_test(values: Sequence[float], eval_se: Sequence[float | None] | None = None, level: float = 0.95) -> Interval:
    """Mean over seeds (e.g. of paired differences) with a t interval widened by the evaluation SE, and the p of mean = 0.

    The one-sample form of compare_seeds: variance of the mean s²/n + ē², Satterthwaite df; one
    seed, or seeds that agree with no evaluation SE, or no spread at all: unbounded, p = 1.
    """
    level = _check_level(level)
    m, sv, ev = seed_eval_variance(values, eval_se, "seeds_test")
    n = len(list(values))
    unbounded = Interval(m, -math.inf, math.inf, n, "seeds-t+eval" if ev is not None else "seeds-t", p=1.0)
    if not math.isfinite(sv) or (sv == 0.0 and ev is None) or sv + (ev or 0.0) == 0.0:
        return unbounded
    var = sv + (ev or 0.0)
    # Satterthwaite with the evaluation term known, and never narrower than the seeds alone.
    half, p = _t_test(m, [(var, var**2 / (sv**2 / (n - 1)) if sv > 0.0 else math.inf), (sv, n - 1)], level)
    return Interval(m, m - half, m + half, n, unbounded.method, p=p)


def compare_intervals(
    a: Interval,
    b: Interval,
    a_name: str,
    b_name: str,
    higher_is_better: bool,
    method: str = "independent-intervals",
) -> Comparison:
    """Difference of two independent intervals, half-width sqrt(ha^2 + hb^2) (normal approximation)."""
    diff = a.estimate - b.estimate
    if a.n < 2 or b.n < 2:
        # An interval from one unit or seed carries no information about its own spread.
        return _comparison(a_name, b_name, diff, -math.inf, math.inf, higher_is_better, method, p=1.0)
    half = math.hypot(a.half_width(), b.half_width())
    if not math.isfinite(half) or half == 0.0:
        return _comparison(a_name, b_name, diff, -math.inf, math.inf, higher_is_better, method, p=1.0)
    return _comparison(a_name, b_name, diff, diff - half, diff + half, higher_is_better, method)


def holm(pvalues: Sequence[float | None]) -> list[float]:
    """Holm step-down adjusted p-values (a missing p counts as 1): reject where adjusted p < α for family-wise α.

    Hand-written: five lines, and no kept dependency of saelab's provides it (statsmodels is not one).
    """
    ps = [1.0 if p is None or not math.isfinite(p) else min(1.0, max(0.0, float(p))) for p in pvalues]
    m = len(ps)
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: ps[j])):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


def adjusted(c: Comparison, p_adjusted: float, alpha: float = 0.05) -> Comparison:
    """The comparison judged on its family-wise adjusted p-value: a winner only when p_adjusted < alpha."""
    win = p_adjusted < alpha and math.isfinite(c.diff) and c.diff != 0.0
    sign = math.copysign(1.0, c.diff)  # the side of zero the difference lies on
    v = _verdict(c.a, c.b, sign, sign, c.higher_is_better) if win else NOT_SEPARABLE
    return replace(c, p_adjusted=float(p_adjusted), verdict=v)


def adjust_family(comparisons: Sequence[Comparison], alpha: float = 0.05) -> list[Comparison]:
    """Every comparison of one family Holm-adjusted and judged at family-wise `alpha`."""
    adj = holm([c.p for c in comparisons])
    return [adjusted(c, q, alpha) for c, q in zip(comparisons, adj)]


def paired_bootstrap(
    parts_a: Mapping[str, np.ndarray],
    parts_b: Mapping[str, np.ndarray],
    stat: Callable[[Mapping[str, np.ndarray]], np.ndarray],
    a: str,
    b: str,
    higher_is_better: bool,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    method: str = "paired-bootstrap",
) -> Comparison:
    """Percentile bootstrap of stat(a) - stat(b) with the same unit weights for both (same evaluation units)."""
    level = _check_level(level)
    n_boot = _check_n_boot(n_boot)
    matrix, (lay_a, lay_b) = _parts_matrix([parts_a, parts_b])
    full = matrix.sum(axis=0, keepdims=True)
    diff = float(_apply_stat(stat, _split(full, lay_a), 1)[0] - _apply_stat(stat, _split(full, lay_b), 1)[0])
    reps = np.concatenate(
        [
            _apply_stat(stat, _split(s, lay_a), s.shape[0]) - _apply_stat(stat, _split(s, lay_b), s.shape[0])
            for s in _replicate_sums(matrix, n_boot, seed)
        ]
    )
    lo, hi = _percentiles(reps, level, "paired_bootstrap")
    finite = reps[np.isfinite(reps)]
    # Two-sided bootstrap p: twice the smaller share of replicates on either side of 0 (+1 smoothing: never 0).
    p = min(1.0, 2.0 * (min((finite <= 0).sum(), (finite >= 0).sum()) + 1) / (finite.size + 1))
    return _comparison(a, b, diff, lo, hi, higher_is_better, method, p=p)
