"""95% intervals and comparisons for experiment results.

Two sources of uncertainty are covered:

* seeds: a metric measured once per training seed; the interval is Student-t over seeds
  (`seeds_interval`, `compare_seeds`);
* evaluation data: a metric that is a function of sums over evaluation units (rows, games, or
  contiguous blocks of rows); the interval is a percentile bootstrap that resamples units
  (`bootstrap_sums`, `paired_bootstrap`). Rows from one game or document are correlated, so
  resample games (`unit_parts`) or contiguous blocks (`block_parts`) rather than rows when they are.

A comparison declares "A beats B" only when the interval of the difference excludes zero in A's
favour; otherwise its verdict is "not separable at this budget". Every comparison carries a p-value;
a family of them (one paper's claims, one report's matched pairs) is judged on Holm-adjusted
p-values (`holm`, `adjust_family`) at family-wise 5%. Seed comparisons add each SAE's evaluation
variance (`<metric>_eval_se` in a row) to the between-seed variance, and no comparison has zero width. Every `to_dict` writes None where
a number is NaN or infinite, so `json.dumps(..., allow_nan=False)` always succeeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from saelab.errors import ConfigError, DataError

NOT_SEPARABLE = "not separable at this budget"

# Upper bound on the elements of one chunk of the [n_boot, U] count matrix (and of the index draws
# behind it): 2**22 int64 values is 32 MiB, so U ~ 1e6 units stays bounded at a few replicates per chunk.
_CHUNK_ELEMENTS = 1 << 22

# Percentile intervals from replicates where the statistic is non-finite (e.g. a ratio whose
# resampled denominator is zero) are still usable when such replicates are rare; beyond this share
# the statistic is ill-defined on the data and an interval would mislead.
_MAX_NONFINITE_SHARE = 0.01


def _finite_or_none(v: float) -> float | None:
    """The float, or None where it is NaN or infinite (JSON has neither)."""
    v = float(v)
    return v if math.isfinite(v) else None


def _none_to_nan(v) -> float:
    """Inverse of _finite_or_none for reading dicts back."""
    return math.nan if v is None else float(v)


def _check_level(level: float) -> float:
    """Validate a confidence level in (0, 1)."""
    try:
        lv = float(level)
    except (TypeError, ValueError):
        raise ConfigError("level", level, "must be a number in (0, 1), e.g. 0.95") from None
    if not 0.0 < lv < 1.0:
        raise ConfigError("level", level, "must be in (0, 1), e.g. 0.95")
    return lv


def _check_n_boot(n_boot: int) -> int:
    """Validate a bootstrap replicate count."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ConfigError("n_boot", n_boot, "must be a positive integer")
    return int(n_boot)


def _as_values(values: Sequence[float], field: str) -> np.ndarray:
    """A 1-D float array of finite values, or DataError naming the field."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{field}: values must be numbers, got {values!r}") from None
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size == 0:
        raise DataError(f"{field}: no values (need at least one)")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise DataError(f"{field}: value {float(arr[bad][0])!r} at index {int(np.flatnonzero(bad)[0])} is not finite")
    return arr


def _percentiles(reps: np.ndarray, level: float, what: str) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates, dropping rare non-finite ones."""
    finite = np.isfinite(reps)
    n_bad = int((~finite).sum())
    if n_bad > _MAX_NONFINITE_SHARE * reps.size:
        raise DataError(
            f"{what}: the statistic is not finite on {n_bad} of {reps.size} bootstrap replicates "
            "(e.g. a ratio with a zero denominator); check the per-unit sums"
        )
    alpha = 1.0 - level
    lo, hi = np.quantile(reps[finite], [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval and where it came from."""

    estimate: float
    lo: float
    hi: float
    n: int
    method: str
    p: float | None = None  # p-value of estimate = 0 when the measure has its own test (None: read from the interval)

    def half_width(self) -> float:
        """The larger distance from the estimate to an end (the ± shown for a possibly asymmetric interval)."""
        return max(self.estimate - self.lo, self.hi - self.estimate)

    def contains(self, value: float) -> bool:
        """Whether value lies in the closed interval [lo, hi]."""
        return bool(self.lo <= value <= self.hi)

    def to_dict(self) -> dict:
        """JSON-safe dict {"estimate","lo","hi","n","method"} (+ "p" when it has one); non-finite numbers become None."""
        d = {
            "estimate": _finite_or_none(self.estimate),
            "lo": _finite_or_none(self.lo),
            "hi": _finite_or_none(self.hi),
            "n": int(self.n),
            "method": self.method,
        }
        if self.p is not None:
            d["p"] = _finite_or_none(self.p)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Interval:
        """Read back a dict written by to_dict (None becomes NaN)."""
        try:
            return cls(
                estimate=_none_to_nan(d["estimate"]),
                lo=_none_to_nan(d["lo"]),
                hi=_none_to_nan(d["hi"]),
                n=int(d["n"]),
                method=str(d["method"]),
                p=None if d.get("p") is None else float(d["p"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"interval: cannot read {d!r} ({e.__class__.__name__}: {e})") from None


def seeds_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean over seeds; a single seed gives lo = hi = estimate (method "single")."""
    level = _check_level(level)
    arr = _as_values(values, "seeds_interval")
    n = arr.size
    mean = float(arr.mean())
    if n == 1:
        return Interval(mean, mean, mean, 1, "single")
    # scipy is imported only once an interval is computed: importing this module stays cheap.
    from scipy.stats import t as student_t

    half = float(student_t.ppf(0.5 + level / 2.0, n - 1)) * float(arr.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, "seeds-t")


def _parts_matrix(
    parts_list: Sequence[Mapping[str, np.ndarray]],
) -> tuple[np.ndarray, list[list[tuple[str, slice, tuple]]]]:
    """Stack every part's columns into one [U, C] matrix so all replicate sums come from one matmul."""
    cols: list[np.ndarray] = []
    layouts: list[list[tuple[str, slice, tuple]]] = []
    n_units = None
    start = 0
    for parts in parts_list:
        if not isinstance(parts, Mapping) or not parts:
            raise ConfigError("parts", parts, "must be a non-empty mapping of name -> per-unit sums")
        layout = []
        for key, value in parts.items():
            arr = np.asarray(value, dtype=np.float64)
            if arr.ndim == 0 or arr.ndim > 2:
                raise DataError(f"parts[{key!r}]: shape {arr.shape} must be [U] or [U, m]")
            if n_units is None:
                n_units = arr.shape[0]
            elif arr.shape[0] != n_units:
                raise DataError(f"parts[{key!r}]: {arr.shape[0]} units, but other parts have {n_units}")
            if not np.isfinite(arr).all():
                raise DataError(f"parts[{key!r}]: holds non-finite values")
            tail = arr.shape[1:]
            width = int(np.prod(tail)) if tail else 1
            cols.append(arr.reshape(arr.shape[0], width))
            layout.append((key, slice(start, start + width), tail))
            start += width
        layouts.append(layout)
    if not n_units:
        raise DataError("parts: no units (arrays are empty)")
    return np.concatenate(cols, axis=1), layouts


def _split(sums: np.ndarray, layout: list[tuple[str, slice, tuple]]) -> dict[str, np.ndarray]:
    """Undo _parts_matrix for one parts dict: [r, C] -> {key: [r] or [r, m]}."""
    r = sums.shape[0]
    return {key: sums[:, sl].reshape((r,) + tail) for key, sl, tail in layout}


def _apply_stat(stat: Callable, sums: dict[str, np.ndarray], r: int) -> np.ndarray:
    """Call the statistic and check it gives one value per replicate."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(stat(sums), dtype=np.float64)
    if out.size != r:
        raise ConfigError("stat", stat, f"must return one value per replicate ({r}), returned shape {out.shape}")
    return out.reshape(r)


def _replicate_sums(matrix: np.ndarray, n_boot: int, seed: int):
    """Yield [r, C] chunks of resampled unit sums: counts W (multinomial, via uniform index draws) @ matrix."""
    n_units = matrix.shape[0]
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_ELEMENTS // n_units)
    done = 0
    while done < n_boot:
        r = min(per_chunk, n_boot - done)
        idx = rng.integers(0, n_units, size=(r, n_units))
        idx += (np.arange(r) * n_units)[:, None]
        counts = np.bincount(idx.ravel(), minlength=r * n_units).reshape(r, n_units)
        yield counts.astype(np.float64) @ matrix
        done += r


def bootstrap_sums(
    parts: Mapping[str, np.ndarray],
    stat: Callable[[Mapping[str, np.ndarray]], np.ndarray],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    method: str = "bootstrap-rows",
) -> Interval:
    """Percentile bootstrap of stat(sums of per-unit parts), resampling units with replacement."""
    level = _check_level(level)
    n_boot = _check_n_boot(n_boot)
    matrix, (layout,) = _parts_matrix([parts])
    estimate = float(_apply_stat(stat, _split(matrix.sum(axis=0, keepdims=True), layout), 1)[0])
    reps = np.concatenate(
        [_apply_stat(stat, _split(s, layout), s.shape[0]) for s in _replicate_sums(matrix, n_boot, seed)]
    )
    lo, hi = _percentiles(reps, level, "bootstrap_sums")
    return Interval(estimate, lo, hi, matrix.shape[0], method)


def block_parts(per_row: Mapping[str, np.ndarray], n_blocks: int = 1000) -> dict[str, np.ndarray]:
    """Sums over min(n_blocks, rows) contiguous, near-equal blocks of rows (keeps within-game correlation inside a block)."""
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, (int, np.integer)) or n_blocks < 1:
        raise ConfigError("n_blocks", n_blocks, "must be a positive integer")
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in per_row.items()}
    if not arrays:
        raise ConfigError("per_row", per_row, "must be a non-empty mapping of name -> per-row values")
    lengths = {k: (a.shape[0] if a.ndim else 0) for k, a in arrays.items()}
    n_rows = next(iter(lengths.values()))
    if any(n != n_rows for n in lengths.values()):
        raise DataError(f"per_row: arrays differ in length {lengths}")
    if n_rows == 0:
        raise DataError("per_row: no rows")
    nb = min(int(n_blocks), n_rows)
    starts = (np.arange(nb) * n_rows) // nb  # strictly increasing since nb <= n_rows
    return {k: np.add.reduceat(a, starts, axis=0) for k, a in arrays.items()}


def unit_parts(per_row: Mapping[str, np.ndarray], units: Sequence) -> dict[str, np.ndarray]:
    """Sums of per-row values per unit label (e.g. a game id), units in sorted label order."""
    labels = np.asarray(units)
    if labels.ndim != 1 or labels.size == 0:
        raise DataError(f"units: need a non-empty 1-D label per row, got shape {labels.shape}")
    _, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(-1)
    n_units = int(inverse.max()) + 1
    out = {}
    for key, value in per_row.items():
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 0 or arr.shape[0] != labels.size:
            raise DataError(f"per_row[{key!r}]: {arr.shape[0] if arr.ndim else 0} rows, but units has {labels.size}")
        acc = np.zeros((n_units,) + arr.shape[1:])
        np.add.at(acc, inverse, arr)
        out[key] = acc
    return out


def normal_quantile(level: float) -> float:
    """Two-sided normal critical value, e.g. 1.96 for level 0.95."""
    return NormalDist().inv_cdf(0.5 + _check_level(level) / 2.0)


def _decimals(estimate: float, half: float) -> int:
    """Decimals for display: 1 for magnitudes >= 10 (counts), else two significant digits of the ± part."""
    if abs(estimate) >= 10.0:
        return 1
    if half > 0.0 and math.isfinite(half):
        ref, sig = half, 2
    else:
        ref, sig = abs(estimate), 3  # no spread to size the digits by: three significant digits of the value
    if ref == 0.0:
        return 0  # an exact zero with no spread (a count of 0): "0", not "0.0000"
    return int(min(10, max(0, sig - 1 - math.floor(math.log10(ref)))))


def format_interval(iv: Interval | None, digits: int | None = None) -> str:
    """Readable "0.0930 ± 0.0041" (± is the larger side of the interval); "–" for a missing value."""
    if iv is None or not math.isfinite(iv.estimate):
        return "–"
    half = iv.half_width()
    d = _decimals(iv.estimate, half) if digits is None else int(digits)
    if not math.isfinite(half):
        return f"{iv.estimate:.{d}f} ± ?"
    if half == 0.0:
        return f"{iv.estimate:.{d}f}"
    return f"{iv.estimate:.{d}f} ± {half:.{d}f}"
