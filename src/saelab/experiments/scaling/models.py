"""The scaling-law forms: power, power + constant, and the joint L(n, k); their least-squares fits."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

FORMS = ("power", "power+const", "joint")
# Command-line names of a quantity -> the key rows store it under.
KEY_ALIASES = {"compute": "flops"}
AUTO_ALPHA = (
    0.01  # per test: the false-exclusion rate of "auto" on an exact law (one test decides whether any size goes)
)
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
                sol = least_squares(
                    residual, p0, jac=jac, method="lm", xtol=1e-13, ftol=1e-13, gtol=1e-13, max_nfev=4000
                )
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
        starts.append(
            np.array(
                [
                    alpha + beta_k * mk + beta_n * mn + gamma * mk * mn,
                    beta_k + gamma * mn,
                    beta_n + gamma * mk,
                    gamma,
                    zeta + eta * mk,
                    eta,
                ]
            )
        )
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
    "power+const": _Model(
        "power+const",
        ("coefficient", "exponent", "irreducible"),
        _power_const_fit,
        _power_const_log_predict,
        _power_check(3),
    ),
    "joint": _Model("joint", JOINT_PARAMS, _joint_fit, _joint_log_predict, _joint_check),
}
