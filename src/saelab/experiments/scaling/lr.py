"""The largest stable learning rate per dictionary size, and its trend."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from saelab.errors import ConfigError, DataError
from saelab.experiments.scaling.fits import PowerFit, _num, fit_power
from saelab.experiments.scaling.rows import _number, row_value

# --- learning rate -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LrPoint:
    """The sweep at one size: the largest stable lr and how it was found."""

    n_latents: float
    lr_max: float
    n_runs: int
    n_stable: int
    best: float  # best y (e.g. nmse) at this size
    censored: bool  # the largest lr tried was stable: lr_max is only a lower bound

    def to_dict(self) -> dict:
        """JSON-safe dict."""
        return {
            "n_latents": self.n_latents,
            "lr_max": self.lr_max,
            "n_runs": self.n_runs,
            "n_stable": self.n_stable,
            "best": _num(self.best),
            "censored": self.censored,
        }


@dataclass(frozen=True)
class LrFit:
    """Largest stable lr per size and the power fit lr_max = a n^b (the paper: b = -1/2)."""

    points: tuple[LrPoint, ...]
    fit: PowerFit
    inverse_sqrt_in_ci: bool | None  # None without bootstrap resamples (no interval to test)
    n_skipped: int

    def to_dict(self) -> dict:
        """JSON-safe dict."""
        return {
            "points": [p.to_dict() for p in self.points],
            "fit": self.fit.to_dict(),
            "inverse_sqrt_in_ci": self.inverse_sqrt_in_ci,
            "n_skipped": self.n_skipped,
        }


def _present(row: Mapping, key: str) -> bool:
    """Whether the row records key at all (even as null)."""
    params = row.get("params")
    return key in row or (isinstance(params, Mapping) and key in params)


def _truthy(v) -> bool:
    """JSON-ish truth: true, 1, "true", "yes"."""
    if isinstance(v, str):
        return v.strip().lower() in ("true", "yes", "1")
    return bool(v)


def largest_stable_lr(
    rows: Sequence[Mapping],
    diverged_key: str = "diverged",
    *,
    lr_key: str = "lr",
    n_key: str = "n_latents",
    y_key: str = "nmse",
    loss_key: str = "loss",
    tolerance: float = 1.5,
    n_boot: int = 500,
    seed: int = 0,
    level: float = 0.95,
) -> LrFit:
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
        raise DataError(
            f"largest_stable_lr: {len(points)} size(s) with a finished run, need at least 2 "
            f"({skipped} row(s) lacked {n_key} or {lr_key})"
        )
    fit = fit_power([p.n_latents for p in points], [p.lr_max for p in points], n_boot=n_boot, seed=seed, level=level)
    fit = replace(fit, x_key=n_key, y_key=f"max stable {lr_key}", n_skipped=skipped)
    in_ci = fit.intervals["exponent"].contains(-0.5) if fit.n_boot > fit.n_boot_failed else None
    return LrFit(tuple(points), fit, in_ci, skipped)
