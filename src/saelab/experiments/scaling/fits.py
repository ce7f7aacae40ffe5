"""Fitting a scaling law: typed results, the automatic size exclusion, bootstrap intervals."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t

from saelab.errors import ConfigError, DataError
from saelab.experiments.scaling.models import (
    AUTO_ALPHA,
    AUTO_FLOOR,
    BOOT_METHOD,
    JOINT_PARAMS,
    MODELS,
    _Degenerate,
    _joint_terms,
    _Model,
)
from saelab.util.intervals import Interval

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
        out.update(
            {
                "n_points": self.n_points,
                "n_excluded": len(self.excluded_n),
                "n_skipped": self.n_skipped,
                "residual_rms": _num(self.residual_rms),
                "n_boot": self.n_boot,
                "n_boot_failed": self.n_boot_failed,
                "intervals": {k: iv.to_dict() for k, iv in self.intervals.items()},
                "points": {"n": list(self.n), "k": list(self.k), "y": list(self.y)},
                "excluded": {"n": list(self.excluded_n), "k": list(self.excluded_k), "y": list(self.excluded_y)},
            }
        )
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
        raise DataError(
            f"{field}[{i}]={float(arr[i])!r} is not a finite positive number; a fit in log space needs x, y > 0"
        )
    return arr


def _check_options(exclude, n_boot, level) -> None:
    """Validate the options shared by every fit."""
    if not (
        exclude == "auto" or (isinstance(exclude, (int, np.integer)) and not isinstance(exclude, bool) and exclude >= 0)
    ):
        raise ConfigError("exclude", exclude, 'must be a non-negative integer (smallest sizes to drop) or "auto"')
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ConfigError("n_boot", n_boot, "must be a non-negative integer (0: no intervals)")
    if not (isinstance(level, numbers.Real) and 0.0 < float(level) < 1.0):
        raise ConfigError("level", level, "must be in (0, 1), e.g. 0.95")


def _fit_checked(model: _Model, X: np.ndarray, y: np.ndarray, what: str) -> np.ndarray:
    """Fit after checking the sample can determine the model; DataError naming what is missing."""
    n_params = len(model.names)
    if len(y) < n_params:
        raise DataError(
            f"{what}: {len(y)} point(s), the {model.form} form needs at least {n_params} (one per parameter)"
        )
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


def _off_trend(
    model: _Model,
    p: np.ndarray,
    X_rest: np.ndarray,
    y_rest: np.ndarray,
    X_cand: np.ndarray,
    y_cand: np.ndarray,
    alpha: float,
) -> bool:
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
    intervals = {
        name: Interval(float(params[i]), float(lo[i]), float(hi[i]), len(yu), method)
        for i, name in enumerate(model.names)
    }
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
    return PowerFit(
        form,
        float(params[0]),
        float(params[1]),
        irreducible,
        intervals,
        int(keep.sum()),
        rms,
        _floats(xa[keep]),
        _floats(ya[keep]),
        _floats(xa[~keep]),
        _floats(ya[~keep]),
        n_boot,
        failed,
        irreducible_at_bound=at_bound,
    )


def fit_power(
    x: Sequence[float],
    y: Sequence[float],
    *,
    exclude: int | str = 0,
    n_boot: int = 500,
    seed: int = 0,
    level: float = 0.95,
) -> PowerFit:
    """Fit y = a x^b by linear least squares in log-log space, with bootstrap intervals."""
    return _power_result("power", x, y, exclude, n_boot, seed, level)


def fit_power_const(
    x: Sequence[float],
    y: Sequence[float],
    *,
    exclude: int | str = 0,
    n_boot: int = 500,
    seed: int = 0,
    level: float = 0.95,
) -> PowerFit:
    """Fit y = a x^b + e (0 <= e < min y) by least squares on log y, with bootstrap intervals."""
    return _power_result("power+const", x, y, exclude, n_boot, seed, level)


def fit_joint(
    n: Sequence[float],
    k: Sequence[float],
    y: Sequence[float],
    *,
    exclude: int | str = 0,
    n_boot: int = 500,
    seed: int = 0,
    level: float = 0.95,
) -> JointFit:
    """Fit the paper's L(n, k) (six parameters) by least squares on log L, with bootstrap intervals."""
    na = _check_positive_array(n, "n")
    ka = _check_positive_array(k, "k")
    ya = _check_positive_array(y, "y")
    if not (na.size == ka.size == ya.size):
        raise DataError(f"n, k and y differ in length ({na.size}, {ka.size}, {ya.size})")
    X = np.column_stack([na, ka])
    p, intervals, rms, keep, failed = _fit(MODELS["joint"], X, ya, exclude, n_boot, seed, level, "fit (joint)")
    return JointFit(
        *(float(v) for v in p),
        intervals=intervals,
        n_points=int(keep.sum()),
        residual_rms=rms,
        n=_floats(na[keep]),
        k=_floats(ka[keep]),
        y=_floats(ya[keep]),
        excluded_n=_floats(na[~keep]),
        excluded_k=_floats(ka[~keep]),
        excluded_y=_floats(ya[~keep]),
        n_boot=n_boot,
        n_boot_failed=failed,
    )
