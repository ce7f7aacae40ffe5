"""Scaling-law fits of SAE results (Gao et al., "Scaling and evaluating sparse autoencoders").

Forms, all fitted by least squares on log(y), so every point weighs by its relative error:

* ``power``:        y = a * x**b
* ``power+const``:  y = a * x**b + e with 0 <= e < min(y), the paper's irreducible loss term; fitted with
  a = exp(c), e = min(y) * sigmoid(u) (the bounds hold by construction) and log(x) centred (so c and b
  are not nearly collinear), from several starting values of e;
* ``joint``:        L(n, k) = exp(alpha + beta_k log k + beta_n log n + gamma log k log n) + exp(zeta + eta log k),
  the paper's L(N, K), all six parameters.

Intervals: a case bootstrap over points (resample the points with replacement, refit, take percentiles),
seeded. A resample too degenerate to fit (e.g. too few distinct sizes) is counted in ``n_boot_failed``.

Exclusion rule. The paper drops the smallest sizes as off-trend. Exclusion works on *sizes* (distinct x;
n for the joint fit), so every point at one size goes or stays together:

* ``exclude=N`` drops the N smallest sizes;
* ``exclude="auto"`` starts from the core of the larger sizes left when the most smallest sizes that
  may go are set aside (at most a third of the points, the rest still fittable), and walks down: each
  set-aside size, largest first, joins the core unless a prediction test puts it off the core's fit;
  the first size off trend goes with every smaller one (the paper drops the smallest sizes). The test:
  the mean log residual of the size's m points, divided by its standard error s·sqrt(1/m + h) (s² the
  core's residual variance on its degrees of freedom, h the fit's leverage at that size from the
  Jacobian of log y, so extrapolation's own uncertainty counts), beyond the two-sided Student-t
  quantile at AUTO_ALPHA divided by the number of tests (Bonferroni); a misfit below 1e-4 in log is
  rounding, never off trend. On exact power laws with log-normal noise the chance that any size goes
  is then at most about AUTO_ALPHA (tests/test_scaling_fit.py simulates it at the project's noise
  levels); the earlier rule (drop while the RMS residual exceeds 3x the rest's) dropped on-trend sizes
  in 38-65% of such fits;
* the default ``exclude=0`` keeps every point.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.stats import t as student_t

from saelab.errors import ConfigError, DataError
from saelab.util.intervals import Interval
from saelab.util.jsonl import jsonl_objects

FORMS = ("power", "power+const", "joint")
# Command-line names of a quantity -> the key rows store it under.
KEY_ALIASES = {"compute": "flops"}
AUTO_ALPHA = 0.01  # per test: the false-exclusion rate of "auto" on an exact law (one test decides whether any size goes)
AUTO_FLOOR = 1e-4  # log-residual RMS below this is rounding, never "off trend"
BOOT_METHOD = "bootstrap-points"
JOINT_PARAMS = ("alpha", "beta_k", "beta_n", "gamma", "zeta", "eta")
# Irreducible-term starting values, as a fraction of min(y); the log-space loss has local minima in e.
_E_FRACTIONS = (1e-4, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)


class _Degenerate(Exception):
    """A sample cannot determine the model (too few distinct sizes); bootstrap resamples count these as failed."""


# --- models --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Model:
    """A form: how to fit natural parameters to (X, y) and how to predict log y."""

    form: str
    names: tuple[str, ...]
    fit: Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]
    log_predict: Callable[[np.ndarray, np.ndarray], np.ndarray]
    check: Callable[[np.ndarray], str | None]  # why X cannot determine the model, or None


def _log_sigmoid(u):
    """log(1 / (1 + exp(-u))) without overflow."""
    return -np.logaddexp(0.0, -u)


def _logit(p: float) -> float:
    """Inverse sigmoid, clipped so a boundary value stays a finite start."""
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def _lstsq(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Ordinary least squares coefficients."""
    return np.linalg.lstsq(design, target, rcond=None)[0]


def _best_least_squares(residual, jac, starts: Iterable[np.ndarray]) -> np.ndarray:
    """Run scipy least_squares from every start; keep the lowest cost."""
    from scipy.optimize import least_squares  # scipy is only needed when fitting

    best = None
    for p0 in starts:
        if not np.all(np.isfinite(p0)):
            continue
        try:
            # Trial steps may overflow to inf/NaN; such solutions are discarded below, so their warnings are noise.
            with np.errstate(all="ignore"):
                sol = least_squares(residual, p0, jac=jac, method="lm", xtol=1e-13, ftol=1e-13, gtol=1e-13, max_nfev=4000)
        except (ValueError, np.linalg.LinAlgError):
            continue
        if np.all(np.isfinite(sol.x)) and np.isfinite(sol.cost) and (best is None or sol.cost < best.cost):
            best = sol
    if best is None:
        raise _Degenerate("no starting point converged")
    return best.x


def _distinct(values: np.ndarray) -> int:
    """Number of distinct values."""
    return int(np.unique(values).size)


def _power_fit(X: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """(a, b) of y = a x^b by linear least squares in log-log space."""
    if _distinct(X[:, 0]) < 2:
        raise _Degenerate("fewer than 2 distinct x")
    c, b = _lstsq(np.column_stack([np.ones(len(y)), np.log(X[:, 0])]), np.log(y))
    return np.array([math.exp(c), b])


def _power_log_predict(p: np.ndarray, X: np.ndarray) -> np.ndarray:
    """log(a x^b)."""
    return math.log(p[0]) + p[1] * np.log(X[:, 0])


def _power_const_fit(X: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """(a, b, e) of y = a x^b + e, 0 <= e < min(y), least squares on log y."""
    if _distinct(X[:, 0]) < 3:
        raise _Degenerate("fewer than 3 distinct x")
    lx = np.log(X[:, 0])
    m = lx.mean()
    t = lx - m
    ly = np.log(y)
    ymin = float(y.min())
    log_ymin = math.log(ymin)

    def parts(p):
        first = p[0] + p[1] * t
        second = log_ymin + _log_sigmoid(p[2])
        return first, second, np.logaddexp(first, second)

    def residual(p):
        return ly - parts(p)[2]

    def jac(p):
        first, _, model = parts(p)
        w = np.exp(first - model)  # share of the power term in the prediction
        return -np.column_stack([w, w * t, (1.0 - w) / (1.0 + math.exp(min(p[2], 700.0)))])

    starts = []
    if start is not None:
        a, b, e = start
        starts.append(np.array([math.log(a) + b * m, b, _logit(e / ymin)]))
    else:
        for f in _E_FRACTIONS:
            c0, b0 = _lstsq(np.column_stack([np.ones(len(y)), t]), np.log(y - f * ymin))
            starts.append(np.array([c0, b0, _logit(f)]))
    c, b, u = _best_least_squares(residual, jac, starts)
    e = ymin / (1.0 + math.exp(-u)) if u > -700 else 0.0
    # sigmoid(u) rounds to 1 for u > 37; keep e strictly below min(y) as the form promises.
    return np.array([math.exp(c - b * m), b, min(e, float(np.nextafter(ymin, 0.0)))])


def _power_const_log_predict(p: np.ndarray, X: np.ndarray) -> np.ndarray:
    """log(a x^b + e)."""
    first = math.log(p[0]) + p[1] * np.log(X[:, 0])
    return np.logaddexp(first, math.log(p[2])) if p[2] > 0 else first


def _joint_terms(p: np.ndarray, ln: np.ndarray, lk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two exponents of L(n, k) in natural parameters."""
    alpha, beta_k, beta_n, gamma, zeta, eta = p
    return alpha + beta_k * lk + beta_n * ln + gamma * lk * ln, zeta + eta * lk


def _joint_fit(X: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """(alpha, beta_k, beta_n, gamma, zeta, eta) of L(n, k), least squares on log L."""
    ln, lk = np.log(X[:, 0]), np.log(X[:, 1])
    if _distinct(X[:, 0]) < 3 or _distinct(X[:, 1]) < 2 or np.unique(X, axis=0).shape[0] < 6:
        raise _Degenerate("need 3 distinct n, 2 distinct k and 6 distinct (n, k)")
    mn, mk = ln.mean(), lk.mean()
    nc, kc = ln - mn, lk - mk
    ly = np.log(y)
    # Centred parameters (a', bk', bn', g, z', eta): same model with log n, log k measured from their means.
    design = np.column_stack([np.ones(len(y)), kc, nc, kc * nc])

    def parts(q):
        first = design @ q[:4]
        second = q[4] + q[5] * kc
        return first, np.logaddexp(first, second)

    def residual(q):
        return ly - parts(q)[1]

    def jac(q):
        first, model = parts(q)
        w = np.exp(first - model)
        return -np.column_stack([design * w[:, None], (1.0 - w), (1.0 - w) * kc])

    starts = []
    if start is not None:
        alpha, beta_k, beta_n, gamma, zeta, eta = start
        starts.append(np.array([alpha + beta_k * mk + beta_n * mn + gamma * mk * mn,
                                beta_k + gamma * mn, beta_n + gamma * mk, gamma, zeta + eta * mk, eta]))
    else:
        ymin = float(y.min())
        for f in _E_FRACTIONS:
            q4 = _lstsq(design, np.log(y - f * ymin))
            starts.append(np.concatenate([q4, [math.log(f * ymin), 0.0]]))
    a_, bk_, bn_, gamma, z_, eta = _best_least_squares(residual, jac, starts)
    beta_k, beta_n = bk_ - gamma * mn, bn_ - gamma * mk
    alpha = a_ - bk_ * mk - bn_ * mn + gamma * mk * mn
    return np.array([alpha, beta_k, beta_n, gamma, z_ - eta * mk, eta])


def _joint_log_predict(p: np.ndarray, X: np.ndarray) -> np.ndarray:
    """log L(n, k)."""
    return np.logaddexp(*_joint_terms(p, np.log(X[:, 0]), np.log(X[:, 1])))


def _power_check(need: int) -> Callable[[np.ndarray], str | None]:
    """Why X cannot determine a one-variable form with `need` parameters."""
    def check(X):
        d = _distinct(X[:, 0])
        return None if d >= need else f"{d} distinct x value(s), need at least {need}"
    return check


def _joint_check(X: np.ndarray) -> str | None:
    """Why X cannot determine the joint form."""
    dn, dk, pairs = _distinct(X[:, 0]), _distinct(X[:, 1]), np.unique(X, axis=0).shape[0]
    if dn < 3 or dk < 2 or pairs < 6:
        return f"{dn} distinct n, {dk} distinct k, {pairs} distinct (n, k); need at least 3, 2 and 6"
    return None


MODELS = {
    "power": _Model("power", ("coefficient", "exponent"), _power_fit, _power_log_predict, _power_check(2)),
    "power+const": _Model("power+const", ("coefficient", "exponent", "irreducible"), _power_const_fit,
                          _power_const_log_predict, _power_check(3)),
    "joint": _Model("joint", JOINT_PARAMS, _joint_fit, _joint_log_predict, _joint_check),
}


# --- results -------------------------------------------------------------------------------------


def _num(v: float) -> float | None:
    """JSON-safe number: None for NaN or infinity."""
    v = float(v)
    return v if math.isfinite(v) else None


def _ci(iv: Interval | None) -> list | None:
    """[lo, hi] of an interval for JSON."""
    return None if iv is None else [_num(iv.lo), _num(iv.hi)]


@dataclass(frozen=True)
class PowerFit:
    """y = coefficient * x**exponent + irreducible (irreducible is 0 for the "power" form)."""

    form: str
    coefficient: float
    exponent: float
    irreducible: float
    intervals: Mapping[str, Interval]
    n_points: int
    residual_rms: float
    x: tuple[float, ...]
    y: tuple[float, ...]
    excluded_x: tuple[float, ...] = ()
    excluded_y: tuple[float, ...] = ()
    n_boot: int = 0
    n_boot_failed: int = 0
    n_skipped: int = 0
    x_key: str = "x"
    y_key: str = "y"
    group: str = "all"
    irreducible_at_bound: bool = False  # e ran into min(y): the data show no floor below their smallest value

    @property
    def exponent_ci(self) -> tuple[float, float]:
        """95% (or the chosen level) bootstrap interval of the exponent."""
        iv = self.intervals["exponent"]
        return (iv.lo, iv.hi)

    def predict(self, x) -> np.ndarray:
        """The fitted curve at x."""
        return self.coefficient * np.asarray(x, dtype=np.float64) ** self.exponent + self.irreducible

    def to_dict(self) -> dict:
        """JSON-safe summary: point estimates, intervals, the points used and excluded."""
        return {
            "form": self.form,
            "group": self.group,
            "x_key": self.x_key,
            "y_key": self.y_key,
            "coefficient": _num(self.coefficient),
            "exponent": _num(self.exponent),
            "irreducible": _num(self.irreducible),
            "coefficient_ci": _ci(self.intervals.get("coefficient")),
            "exponent_ci": _ci(self.intervals.get("exponent")),
            "irreducible_ci": _ci(self.intervals.get("irreducible")),
            "irreducible_at_bound": self.irreducible_at_bound,
            "n_points": self.n_points,
            "n_excluded": len(self.excluded_x),
            "n_skipped": self.n_skipped,
            "residual_rms": _num(self.residual_rms),
            "n_boot": self.n_boot,
            "n_boot_failed": self.n_boot_failed,
            "intervals": {k: iv.to_dict() for k, iv in self.intervals.items()},
            "points": {"x": list(self.x), "y": list(self.y)},
            "excluded": {"x": list(self.excluded_x), "y": list(self.excluded_y)},
        }


@dataclass(frozen=True)
class JointFit:
    """L(n, k) = exp(alpha + beta_k log k + beta_n log n + gamma log k log n) + exp(zeta + eta log k)."""

    alpha: float
    beta_k: float
    beta_n: float
    gamma: float
    zeta: float
    eta: float
    intervals: Mapping[str, Interval]
    n_points: int
    residual_rms: float
    n: tuple[float, ...]
    k: tuple[float, ...]
    y: tuple[float, ...]
    excluded_n: tuple[float, ...] = ()
    excluded_k: tuple[float, ...] = ()
    excluded_y: tuple[float, ...] = ()
    n_boot: int = 0
    n_boot_failed: int = 0
    n_skipped: int = 0
    x_key: str = "n_latents"
    y_key: str = "y"
    group: str = "all"
    form: str = "joint"

    def params(self) -> np.ndarray:
        """The six parameters in JOINT_PARAMS order."""
        return np.array([getattr(self, name) for name in JOINT_PARAMS])

    def predict(self, n, k) -> np.ndarray:
        """The fitted L(n, k)."""
        n, k = np.broadcast_arrays(np.asarray(n, dtype=np.float64), np.asarray(k, dtype=np.float64))
        first, second = _joint_terms(self.params(), np.log(n), np.log(k))
        return np.exp(first) + np.exp(second)

    def exponent_n(self, k: float) -> float:
        """Local exponent of the reducible term in n at sparsity k (beta_n + gamma log k)."""
        return self.beta_n + self.gamma * math.log(k)

    def irreducible(self, k: float) -> float:
        """The irreducible term exp(zeta + eta log k) at sparsity k."""
        return math.exp(self.zeta + self.eta * math.log(k))

    def to_dict(self) -> dict:
        """JSON-safe summary: every parameter with its interval, the points used and excluded."""
        out = {"form": self.form, "group": self.group, "x_key": self.x_key, "y_key": self.y_key}
        for name in JOINT_PARAMS:
            out[name] = _num(getattr(self, name))
            out[f"{name}_ci"] = _ci(self.intervals.get(name))
        out.update({
            "n_points": self.n_points,
            "n_excluded": len(self.excluded_n),
            "n_skipped": self.n_skipped,
            "residual_rms": _num(self.residual_rms),
            "n_boot": self.n_boot,
            "n_boot_failed": self.n_boot_failed,
            "intervals": {k: iv.to_dict() for k, iv in self.intervals.items()},
            "points": {"n": list(self.n), "k": list(self.k), "y": list(self.y)},
            "excluded": {"n": list(self.excluded_n), "k": list(self.excluded_k), "y": list(self.excluded_y)},
        })
        return out


# --- fitting machinery ---------------------------------------------------------------------------


def _check_positive_array(values, field: str) -> np.ndarray:
    """A 1-D float array of finite positive values, else DataError naming the field, index and value."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{field}: values must be numbers") from None
    if arr.ndim != 1:
        raise DataError(f"{field}: expected a 1-D sequence, got shape {arr.shape}")
    bad = ~(np.isfinite(arr) & (arr > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{field}[{i}]={float(arr[i])!r} is not a finite positive number; a fit in log space needs x, y > 0")
    return arr


def _check_options(exclude, n_boot, level) -> None:
    """Validate the options shared by every fit."""
    if not (exclude == "auto" or (isinstance(exclude, (int, np.integer)) and not isinstance(exclude, bool) and exclude >= 0)):
        raise ConfigError("exclude", exclude, 'must be a non-negative integer (smallest sizes to drop) or "auto"')
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ConfigError("n_boot", n_boot, "must be a non-negative integer (0: no intervals)")
    if not (isinstance(level, numbers.Real) and 0.0 < float(level) < 1.0):
        raise ConfigError("level", level, "must be in (0, 1), e.g. 0.95")


def _fit_checked(model: _Model, X: np.ndarray, y: np.ndarray, what: str) -> np.ndarray:
    """Fit after checking the sample can determine the model; DataError naming what is missing."""
    n_params = len(model.names)
    if len(y) < n_params:
        raise DataError(f"{what}: {len(y)} point(s), the {model.form} form needs at least {n_params} (one per parameter)")
    why = model.check(X)
    if why:
        raise DataError(f"{what}: {why} for the {model.form} form")
    try:
        return model.fit(X, y, None)
    except (_Degenerate, OverflowError) as e:
        raise DataError(f"{what}: the {model.form} fit failed ({e})") from None


def _rms(r: np.ndarray) -> float:
    """Root mean square."""
    return float(np.sqrt(np.mean(np.square(r)))) if r.size else math.nan


def _log_jacobian(model: _Model, p: np.ndarray, X: np.ndarray) -> np.ndarray:
    """d log y / d params [points, params] by central differences (every form, the nonlinear ones included)."""
    cols = []
    for i in range(len(p)):
        step = 1e-6 * max(abs(float(p[i])), 1e-8)
        hi, lo = p.copy(), p.copy()
        hi[i] += step
        lo[i] -= step
        cols.append((model.log_predict(hi, X) - model.log_predict(lo, X)) / (2 * step))
    return np.column_stack(cols)


def _off_trend(model: _Model, p: np.ndarray, X_rest: np.ndarray, y_rest: np.ndarray, X_cand: np.ndarray, y_cand: np.ndarray,
               alpha: float) -> bool:
    """Whether the candidate size's points miss the larger sizes' fit p beyond its prediction interval (see the module doc)."""
    dof = len(y_rest) - len(p)
    if dof < 1:
        return False
    r_rest = np.log(y_rest) - model.log_predict(p, X_rest)
    r_cand = np.log(y_cand) - model.log_predict(p, X_cand)
    if not _rms(r_cand) > AUTO_FLOOR:
        return False
    s2 = float(np.sum(r_rest**2)) / dof
    J = _log_jacobian(model, p, X_rest)
    g = _log_jacobian(model, p, X_cand).mean(0)  # the candidate's mean residual varies with the mean gradient
    h = float(g @ np.linalg.pinv(J.T @ J) @ g)
    se = math.sqrt(s2 * (1.0 / len(y_cand) + max(h, 0.0)))
    if se == 0.0:
        return True
    return abs(float(r_cand.mean())) / se > float(student_t.ppf(1 - alpha / 2, dof))


def _exclusion_mask(model: _Model, X: np.ndarray, y: np.ndarray, exclude, what: str) -> np.ndarray:
    """Which points to keep under the module's exclusion rule."""
    sizes = X[:, 0]
    distinct = np.unique(sizes)
    if exclude == "auto":
        # The most smallest sizes that may go: at most a third of the points, and the rest must still be fittable.
        most = 0
        while most < distinct.size:
            rest = sizes > distinct[most]
            if (~rest).sum() > len(y) // 3 or rest.sum() <= len(model.names) or model.check(X[rest]):
                break
            most += 1
        keep = sizes > distinct[most - 1] if most else np.ones(len(y), dtype=bool)
        # Walk down from the core of larger sizes; the first size off its trend goes with every smaller one.
        # Up to `most` tests: Bonferroni keeps the chance that an exact law loses any size at AUTO_ALPHA.
        for j in reversed(range(most)):
            cand = sizes == distinct[j]
            try:
                p = model.fit(X[keep], y[keep], None)
            except (_Degenerate, OverflowError):
                break
            if _off_trend(model, p, X[keep], y[keep], X[cand], y[cand], AUTO_ALPHA / most):
                break
            keep = keep | cand
        return keep
    if exclude >= distinct.size:
        raise ConfigError("exclude", exclude, f"would drop every point: {what} has {distinct.size} distinct size(s)")
    return sizes > distinct[exclude - 1] if exclude else np.ones(len(y), dtype=bool)


def _fit(model: _Model, X: np.ndarray, y: np.ndarray, exclude, n_boot: int, seed: int, level: float, what: str):
    """Exclusion, point fit, residual RMS and case-bootstrap intervals; returns the pieces of a result."""
    _check_options(exclude, n_boot, level)
    keep = _exclusion_mask(model, X, y, exclude, what)
    Xu, yu = X[keep], y[keep]
    params = _fit_checked(model, Xu, yu, what)
    rms = _rms(np.log(yu) - model.log_predict(params, Xu))
    reps, failed = [], 0
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        idx = rng.integers(0, len(yu), size=len(yu))
        if model.check(Xu[idx]):
            failed += 1
            continue
        try:
            reps.append(model.fit(Xu[idx], yu[idx], params))
        except (_Degenerate, OverflowError, ValueError):  # a coefficient beyond float range counts as a failed resample
            failed += 1
    alpha = 1.0 - float(level)
    if reps:
        lo, hi = np.quantile(np.array(reps), [alpha / 2, 1 - alpha / 2], axis=0)
    else:
        lo = hi = np.full(len(params), math.nan)
    method = BOOT_METHOD if n_boot else "none"
    intervals = {name: Interval(float(params[i]), float(lo[i]), float(hi[i]), len(yu), method)
                 for i, name in enumerate(model.names)}
    return params, intervals, rms, keep, failed


def _floats(a: np.ndarray) -> tuple[float, ...]:
    """A tuple of Python floats (JSON- and hash-friendly)."""
    return tuple(float(v) for v in a)


def _power_result(form: str, x, y, exclude, n_boot, seed, level) -> PowerFit:
    """Shared body of fit_power and fit_power_const."""
    model = MODELS[form]
    what = f"fit ({form})"
    xa = _check_positive_array(x, "x")
    ya = _check_positive_array(y, "y")
    if xa.size != ya.size:
        raise DataError(f"x has {xa.size} values but y has {ya.size}")
    X = xa[:, None]
    params, intervals, rms, keep, failed = _fit(model, X, ya, exclude, n_boot, seed, level, what)
    irreducible = float(params[2]) if form == "power+const" else 0.0
    at_bound = form == "power+const" and irreducible >= (1.0 - 1e-6) * float(ya[keep].min())
    return PowerFit(form, float(params[0]), float(params[1]), irreducible, intervals, int(keep.sum()), rms,
                    _floats(xa[keep]), _floats(ya[keep]), _floats(xa[~keep]), _floats(ya[~keep]), n_boot, failed,
                    irreducible_at_bound=at_bound)


def fit_power(x: Sequence[float], y: Sequence[float], *, exclude: int | str = 0, n_boot: int = 500, seed: int = 0,
              level: float = 0.95) -> PowerFit:
    """Fit y = a x^b by linear least squares in log-log space, with bootstrap intervals."""
    return _power_result("power", x, y, exclude, n_boot, seed, level)


def fit_power_const(x: Sequence[float], y: Sequence[float], *, exclude: int | str = 0, n_boot: int = 500,
                    seed: int = 0, level: float = 0.95) -> PowerFit:
    """Fit y = a x^b + e (0 <= e < min y) by least squares on log y, with bootstrap intervals."""
    return _power_result("power+const", x, y, exclude, n_boot, seed, level)


def fit_joint(n: Sequence[float], k: Sequence[float], y: Sequence[float], *, exclude: int | str = 0,
              n_boot: int = 500, seed: int = 0, level: float = 0.95) -> JointFit:
    """Fit the paper's L(n, k) (six parameters) by least squares on log L, with bootstrap intervals."""
    na = _check_positive_array(n, "n")
    ka = _check_positive_array(k, "k")
    ya = _check_positive_array(y, "y")
    if not (na.size == ka.size == ya.size):
        raise DataError(f"n, k and y differ in length ({na.size}, {ka.size}, {ya.size})")
    X = np.column_stack([na, ka])
    p, intervals, rms, keep, failed = _fit(MODELS["joint"], X, ya, exclude, n_boot, seed, level, "fit (joint)")
    return JointFit(*(float(v) for v in p), intervals=intervals, n_points=int(keep.sum()), residual_rms=rms,
                    n=_floats(na[keep]), k=_floats(ka[keep]), y=_floats(ya[keep]), excluded_n=_floats(na[~keep]),
                    excluded_k=_floats(ka[~keep]), excluded_y=_floats(ya[~keep]), n_boot=n_boot, n_boot_failed=failed)


# --- rows ----------------------------------------------------------------------------------------


def read_results(paths: Sequence[str | Path]) -> list[dict]:
    """Rows of one or more results.jsonl files; each row gets "_source" = "file:line" for error messages."""
    rows: list[dict] = []
    for path in paths:
        p = Path(path)
        for lineno, row in jsonl_objects(p):
            row["_source"] = f"{p}:{lineno}"
            rows.append(row)
    if not rows:
        raise DataError(f"no result rows in {', '.join(str(p) for p in paths)}")
    return rows


def row_value(row: Mapping, key: str):
    """A row's value for key: top level first, then row["params"]; "compute" reads "flops"; "a.b" walks objects."""
    key = KEY_ALIASES.get(key, key)
    if key in row:
        return row[key]
    params = row.get("params")
    if isinstance(params, Mapping) and key in params:
        return params[key]
    if "." in key:
        cur = row
        for part in key.split("."):
            if not isinstance(cur, Mapping) or part not in cur:
                return None
            cur = cur[part]
        return cur
    return None


def _group_label(value) -> str:
    """A group value as a stable string: 32.0 and 32 are the same group "32"; a missing value is "none"."""
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _sort_key(label: str):
    """Numeric labels in numeric order, then the others alphabetically."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def group_by(rows: Iterable[Mapping], key: str | None) -> dict[str, list[Mapping]]:
    """Rows grouped by row_value(row, key) as a label ("none" when missing; one group "all" when key is None)."""
    groups: dict[str, list[Mapping]] = {}
    for row in rows:
        label = "all" if key is None else _group_label(row_value(row, key))
        groups.setdefault(label, []).append(row)
    return {label: groups[label] for label in sorted(groups, key=_sort_key)}


def _number(v) -> float | None:
    """A finite float from a JSON value, or None (missing, null, NaN, text, bool)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _row_points(rows: Sequence[Mapping], keys: Sequence[str]) -> tuple[np.ndarray, int]:
    """[points, len(keys)] of rows having every key as a finite number, and how many rows were skipped."""
    points, skipped = [], 0
    for i, row in enumerate(rows):
        vals = [_number(row_value(row, k)) for k in keys]
        if any(v is None for v in vals):
            skipped += 1
            continue
        for k, v in zip(keys, vals):
            if v <= 0:
                where = row.get("_source", f"row {i}")
                raise DataError(f"{where}: {k}={v!r} is not positive; a fit in log space needs positive values")
        points.append(vals)
    return np.array(points, dtype=np.float64).reshape(-1, len(keys)), skipped


def fit_rows(rows: Sequence[Mapping], x: str, y: str, by: str | None = None, form: str = "power+const", *,
             exclude: int | str = 0, n_boot: int = 500, seed: int = 0, level: float = 0.95) -> dict[str, PowerFit | JointFit]:
    """Fit y against x per group of rows (joint: x is n, k from params.k); rows lacking a value are skipped.

    Rows lacking the `by` key belong to no group and are not fitted (group_by(rows, by)["none"] holds them);
    within a group, rows lacking x, y (or k) are skipped and counted in the result's n_skipped.
    """
    if form not in FORMS:
        raise ConfigError("form", form, f"must be one of {', '.join(FORMS)}")
    keys = (x, "k", y) if form == "joint" else (x, y)
    out: dict[str, PowerFit | JointFit] = {}
    groups = group_by(rows, by)
    if by is not None:
        groups.pop("none", None)
        if not groups:
            raise DataError(f"no row has a value for {by!r} to group by")
    for label, group_rows in groups.items():
        pts, skipped = _row_points(group_rows, keys)
        name = "all rows" if by is None else f"group {by}={label}"
        if len(pts) == 0:
            raise DataError(f"{name}: no row has numeric {' and '.join(keys)} ({skipped} row(s) skipped)")
        try:
            if form == "joint":
                res = fit_joint(pts[:, 0], pts[:, 1], pts[:, 2], exclude=exclude, n_boot=n_boot, seed=seed, level=level)
            elif form == "power":
                res = fit_power(pts[:, 0], pts[:, 1], exclude=exclude, n_boot=n_boot, seed=seed, level=level)
            else:
                res = fit_power_const(pts[:, 0], pts[:, 1], exclude=exclude, n_boot=n_boot, seed=seed, level=level)
        except DataError as e:
            raise DataError(f"{name}: {e}") from None
        out[label] = replace(res, n_skipped=skipped, x_key=x, y_key=y, group=label)
    return out


# --- learning rate -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LrPoint:
    """The sweep at one size: the largest stable lr and how it was found."""

    n_latents: float
    lr_max: float
    n_runs: int
    n_stable: int
    best: float          # best y (e.g. nmse) at this size
    censored: bool       # the largest lr tried was stable: lr_max is only a lower bound

    def to_dict(self) -> dict:
        """JSON-safe dict."""
        return {"n_latents": self.n_latents, "lr_max": self.lr_max, "n_runs": self.n_runs, "n_stable": self.n_stable,
                "best": _num(self.best), "censored": self.censored}


@dataclass(frozen=True)
class LrFit:
    """Largest stable lr per size and the power fit lr_max = a n^b (the paper: b = -1/2)."""

    points: tuple[LrPoint, ...]
    fit: PowerFit
    inverse_sqrt_in_ci: bool | None  # None without bootstrap resamples (no interval to test)
    n_skipped: int

    def to_dict(self) -> dict:
        """JSON-safe dict."""
        return {"points": [p.to_dict() for p in self.points], "fit": self.fit.to_dict(),
                "inverse_sqrt_in_ci": self.inverse_sqrt_in_ci, "n_skipped": self.n_skipped}


def _present(row: Mapping, key: str) -> bool:
    """Whether the row records key at all (even as null)."""
    params = row.get("params")
    return key in row or (isinstance(params, Mapping) and key in params)


def _truthy(v) -> bool:
    """JSON-ish truth: true, 1, "true", "yes"."""
    if isinstance(v, str):
        return v.strip().lower() in ("true", "yes", "1")
    return bool(v)


def largest_stable_lr(rows: Sequence[Mapping], diverged_key: str = "diverged", *, lr_key: str = "lr",
                      n_key: str = "n_latents", y_key: str = "nmse", loss_key: str = "loss", tolerance: float = 1.5,
                      n_boot: int = 500, seed: int = 0, level: float = 0.95) -> LrFit:
    """Largest lr per size whose run did not diverge, has finite loss and y <= tolerance * best y; fit lr_max = a n^b."""
    if not (isinstance(tolerance, numbers.Real) and tolerance >= 1.0):
        raise ConfigError("tolerance", tolerance, "must be a number >= 1 (a multiple of the best value at each size)")
    by_n: dict[float, list[tuple[float, float | None]]] = {}
    skipped = 0
    for row in rows:
        n, lr = _number(row_value(row, n_key)), _number(row_value(row, lr_key))
        if n is None or lr is None or n <= 0 or lr <= 0:
            skipped += 1
            continue
        y = _number(row_value(row, y_key))
        loss = row_value(row, loss_key)
        # A recorded loss must be finite (NaN is written as null or NaN); rows without one rely on y alone.
        loss_ok = _number(loss) is not None if (loss is not None or _present(row, loss_key)) else True
        finished = loss_ok and not _truthy(row_value(row, diverged_key))
        by_n.setdefault(n, []).append((lr, y if finished else None))
    points = []
    for n in sorted(by_n):
        runs = by_n[n]
        ys = [y for _, y in runs if y is not None]
        if not ys:
            continue
        best = min(ys)
        stable = [lr for lr, y in runs if y is not None and y <= tolerance * best]
        lr_max = max(stable)
        points.append(LrPoint(n, lr_max, len(runs), len(stable), best, lr_max >= max(lr for lr, _ in runs)))
    if len(points) < 2:
        raise DataError(f"largest_stable_lr: {len(points)} size(s) with a finished run, need at least 2 "
                        f"({skipped} row(s) lacked {n_key} or {lr_key})")
    fit = fit_power([p.n_latents for p in points], [p.lr_max for p in points], n_boot=n_boot, seed=seed, level=level)
    fit = replace(fit, x_key=n_key, y_key=f"max stable {lr_key}", n_skipped=skipped)
    in_ci = fit.intervals["exponent"].contains(-0.5) if fit.n_boot > fit.n_boot_failed else None
    return LrFit(tuple(points), fit, in_ci, skipped)


# --- plotting ------------------------------------------------------------------------------------


def _curve_x(values: Sequence[float]) -> np.ndarray:
    """Log-spaced x spanning the data."""
    lo, hi = min(values), max(values)
    return np.geomspace(lo, hi, 200) if hi > lo else np.array([lo])


def plot_fit(results: Mapping[str, PowerFit | JointFit] | PowerFit | JointFit, rows: Sequence[Mapping] | None,
             path: str | Path, title: str | None = None) -> None:
    """Log-log plot of the points (excluded ones hollow grey) and fitted curves per group; atomic PNG write.

    The points come from the results (which keep the used and excluded points); rows, when given, only
    add their count to the title.
    """
    # Imported here: matplotlib is only needed for plots. Figure + the Agg canvas draw without pyplot's
    # global state, so this never switches the backend of a process that also shows plots.
    import io

    from matplotlib import rcParams
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from saelab.util.atomic import atomic_write_bytes

    if isinstance(results, (PowerFit, JointFit)):
        results = {results.group: results}
    if not results:
        raise DataError("plot_fit: no fits to plot")
    fig = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cycle = [c["color"] for c in rcParams["axes.prop_cycle"]]
    i = 0
    excluded_label = ["excluded"]  # one legend entry for every hollow point

    def hollow(xs, ys):
        """Excluded points: hollow and grey, so the fit visibly ignores them."""
        if len(xs):
            ax.scatter(xs, ys, facecolors="none", edgecolors="grey", s=22, zorder=3,
                       label=excluded_label.pop() if excluded_label else None)

    first = next(iter(results.values()))
    for label, res in results.items():
        if isinstance(res, JointFit):
            ks = sorted(set(res.k) | set(res.excluded_k))
            for k in ks:
                colour = cycle[i % len(cycle)]
                i += 1
                n_used = [n for n, kk in zip(res.n, res.k) if kk == k]
                y_used = [y for y, kk in zip(res.y, res.k) if kk == k]
                n_exc = [n for n, kk in zip(res.excluded_n, res.excluded_k) if kk == k]
                y_exc = [y for y, kk in zip(res.excluded_y, res.excluded_k) if kk == k]
                name = f"k={_group_label(k)}" if label == "all" else f"{label}, k={_group_label(k)}"
                ax.scatter(n_used, y_used, color=colour, s=18, zorder=3)
                hollow(n_exc, y_exc)
                xs = _curve_x(n_used + n_exc)
                ax.plot(xs, res.predict(xs, k), color=colour, lw=1.2, label=name)
        else:
            colour = cycle[i % len(cycle)]
            i += 1
            ax.scatter(res.x, res.y, color=colour, s=18, zorder=3)
            hollow(res.excluded_x, res.excluded_y)
            xs = _curve_x(list(res.x) + list(res.excluded_x))
            curve = f"{res.coefficient:.3g}·x^{res.exponent:.3f}"
            if res.form == "power+const":
                curve += f" + {res.irreducible:.3g}"
            ax.plot(xs, res.predict(xs), color=colour, lw=1.2, label=curve if label == "all" else f"{label}: {curve}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(first.x_key)
    ax.set_ylabel(first.y_key)
    heading = title or f"{first.y_key} vs {first.x_key} ({first.form})"
    if rows is not None:
        heading += f", {len(rows)} rows"
    ax.set_title(heading, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.25)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
