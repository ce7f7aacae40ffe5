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
  is then at most about AUTO_ALPHA (tests/experiments/test_scaling_fit.py simulates it at the project's noise
  levels); the earlier rule (drop while the RMS residual exceeds 3x the rest's) dropped on-trend sizes
  in 38-65% of such fits;
* the default ``exclude=0`` keeps every point.
"""

from saelab.experiments.scaling.fits import JointFit, PowerFit, fit_joint, fit_power, fit_power_const
from saelab.experiments.scaling.lr import LrFit, LrPoint, largest_stable_lr
from saelab.experiments.scaling.models import (
    AUTO_ALPHA,
    AUTO_FLOOR,
    BOOT_METHOD,
    FORMS,
    JOINT_PARAMS,
    KEY_ALIASES,
    MODELS,
)
from saelab.experiments.scaling.plot import plot_fit
from saelab.experiments.scaling.rows import fit_rows, group_by, read_results, row_value

__all__ = [
    "AUTO_ALPHA",
    "AUTO_FLOOR",
    "BOOT_METHOD",
    "FORMS",
    "JOINT_PARAMS",
    "JointFit",
    "KEY_ALIASES",
    "LrFit",
    "LrPoint",
    "MODELS",
    "PowerFit",
    "fit_joint",
    "fit_power",
    "fit_power_const",
    "fit_rows",
    "group_by",
    "largest_stable_lr",
    "plot_fit",
    "read_results",
    "row_value",
]
