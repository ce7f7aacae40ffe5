"""Quantities the claims measure from sweep rows, each as an Interval (mean ± 95% CI).

Differences between two configurations use the report's rules (saelab.report.summary): Welch t
over seeds when both sides have ≥ 2 seeds, else the rows' own bootstrap intervals, else an
unbounded interval (never separable). Scaling exponents come with a case-bootstrap interval. A
penalty trained over a grid of α is read off its L0 frontier at a target L0 (log–log
interpolation, per seed) and compared paired by seed; an ablation has a paired block bootstrap.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy.stats import rankdata

from saelab.data.store import ActivationStore
from saelab.errors import ConfigError, DataError
from saelab.sources.lm.ablate_lowest import ablate_below
from saelab.experiments.reproduce.claims import Evidence, comparison_interval
from saelab.experiments.scaling import fit_power
from saelab.formats.folder import load_sae, read_saelab_record
from saelab.util.intervals import Interval, block_parts, compare_intervals, paired_bootstrap, seeds_interval
from saelab.report.summary import L0_TOLERANCE, GroupSummary, MetricSpec, compare_metric, l0_match, summarize

L0_MATCH = 0.25  # an adapted coefficient counts as matched when the mean L0 ends within ±25% of its target


def group(rows: list[dict], name: str) -> GroupSummary:
    """The summary (over seeds) of the configuration named `name` in a sweep's rows."""
    mine = [r for r in rows if r.get("group") == name]
    if not mine:
        have = sorted({str(r.get("group")) for r in rows})
        raise DataError(f"no SAE named {name!r} in the sweep (have: {', '.join(have)})")
    return summarize(mine)[0]


def metric(sweep: str, name: str, key: str) -> Callable[[Evidence], Interval]:
    """A measure: one configuration's metric, mean over seeds with its interval."""
    def measure(ev: Evidence) -> Interval:
        g = group(ev.sweep(sweep), name)
        if key not in g.metrics:
            raise DataError(f"{name!r} has no {key!r} (null on every seed)")
        return g.metrics[key]
    return measure


def difference(sweep: str, a: str, b: str, key: str, match_l0: bool = False, targets: bool = True) -> Callable[[Evidence], Interval]:
    """A measure: metric(a) − metric(b) between two configurations of one sweep (match_l0: their measured L0 must agree).

    targets=False: the two are compared wherever their adapted coefficients ended (settings chosen
    by a search, not a comparison at one L0), so a missed target_l0 is no reason to abstain.
    """
    def measure(ev: Evidence) -> Interval:
        return group_difference(ev.sweep(sweep), a, b, key, match_l0, targets)
    return measure


def group_difference(rows: list[dict], a: str, b: str, key: str, match_l0: bool = False, targets: bool = True) -> Interval:
    """metric(a) − metric(b) with its 95% interval (Welch over seeds, or the rows' bootstrap intervals)."""
    for name in (a, b) if targets else ():
        check_target_reached([r for r in rows if r.get("group") == name], name)
    ga, gb = group(rows, a), group(rows, b)
    if match_l0 and l0_match(replace(ga, target_l0=None), replace(gb, target_l0=None)) is None:
        # Same k is not same L0 for BatchTopK at inference (one global threshold): compare only measured-L0 matches.
        raise DataError(f"L0 {ga.estimate('l0'):.3g} ({a!r}) vs {gb.estimate('l0'):.3g} ({b!r}) differ by more than "
                        f"{L0_TOLERANCE:.0%}: not matched at this budget")
    c = compare_metric(ga, gb, MetricSpec(key, key, True))  # the direction only words the Comparison's verdict
    if c is None:
        raise DataError(f"{key!r} is missing for {a!r} or {b!r}")
    return comparison_interval(c, min(ga.n_seeds, gb.n_seeds))


def target_measured_l0(row: dict) -> float | None:
    """The L0 a row's target counts: above the method's own level (smoothed-L0), else above ε, else non-zeros (None: no L0).

    The first measure the row has decides, zero included: a smoothed-L0 code with nothing above its
    level has missed its target, even though its non-zeros may look like a match.
    """
    for key in ("l0_level", "l0_eps", "l0"):
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def check_target_reached(rows: list[dict], name: str, tolerance: float = L0_MATCH) -> None:
    """DataError when a configuration whose coefficient was adapted to target_l0 ended outside target·(1 ± tolerance).

    Only adapted coefficients can miss (k-budgeted methods meet their k by construction); a
    comparison "at matched L0" with a side that missed it would compare sparsities, not methods.
    """
    adapted = [r for r in rows if r.get("coefficient") is not None and _positive(r.get("target_l0"))]
    if not adapted:
        return
    target = float(adapted[0]["target_l0"])
    l0 = float(np.mean([target_measured_l0(r) or 0.0 for r in adapted]))  # no L0 at all: nothing reached
    if abs(l0 - target) > tolerance * target:
        raise DataError(f"{name!r} reached L0 {l0:.3g}, not its target {target:g} (±{tolerance:.0%}): not matched at this budget")


def gap_change(sweep: str, pairs: tuple[tuple[str, str], tuple[str, str]], key: str) -> Callable[[Evidence], Interval]:
    """A measure: [metric(a2) − metric(b2)] − [metric(a1) − metric(b1)], the two gaps' intervals combined as independent."""
    (a1, b1), (a2, b2) = pairs
    def measure(ev: Evidence) -> Interval:
        rows = ev.sweep(sweep)
        small, large = group_difference(rows, a1, b1, key), group_difference(rows, a2, b2, key)
        c = compare_intervals(large, small, "large", "small", True)
        return comparison_interval(c, min(small.n, large.n))
    return measure


def exponent(sweep: str, names: list[str], x: str = "n_latents", y: str = "nmse", n_boot: int = 500) -> Callable[[Evidence], Interval]:
    """A measure: the exponent b of y = a·x^b over every seed of the named configurations (case bootstrap over points)."""
    def measure(ev: Evidence) -> Interval:
        return fitted_exponent(ev.sweep(sweep), names, x, y, n_boot)
    return measure


def fitted_exponent(rows: list[dict], names: list[str], x: str, y: str, n_boot: int) -> Interval:
    """fit_power over the rows of the named groups; the exponent's bootstrap interval."""
    pts = [(float(r[x]), float(r[y])) for r in rows if r.get("group") in names and _positive(r.get(x)) and _positive(r.get(y))]
    if len({p[0] for p in pts}) < 3:
        raise DataError(f"a power law of {y} in {x} needs ≥ 3 distinct {x}; have {sorted({p[0] for p in pts})}")
    fit = fit_power([p[0] for p in pts], [p[1] for p in pts], n_boot=n_boot)
    iv = fit.intervals["exponent"]
    return Interval(fit.exponent, iv.lo, iv.hi, fit.n_points, f"power-fit {iv.method}")


def exponent_difference(sweep: str, a: list[str], b: list[str], n_boot: int = 500) -> Callable[[Evidence], Interval]:
    """A measure: exponent(a) − exponent(b) of NMSE in n_latents, the two bootstrap intervals combined as independent."""
    def measure(ev: Evidence) -> Interval:
        rows = ev.sweep(sweep)
        ea = fitted_exponent(rows, a, "n_latents", "nmse", n_boot)
        eb = fitted_exponent(rows, b, "n_latents", "nmse", n_boot)
        return comparison_interval(compare_intervals(ea, eb, "a", "b", True), min(ea.n, eb.n))
    return measure


def ablate_lowest_nmse(sweep: str, name: str | list[str], keep: float = 0.5, max_rows: int = 50_000, n_boot: int = 500,
                       target: float | None = None) -> Callable[[Evidence], Interval]:
    """A measure: NMSE increase when one global threshold drops the lowest activations so that L0 falls to `keep`·L0.

    The threshold is the (1 − keep) quantile of the nonzero codes on held-out rows; the interval is a
    paired bootstrap over contiguous row blocks (positions of one game stay together), then
    averaged over seeds.
    """
    def measure(ev: Evidence) -> Interval:
        # A list of names is a grid: the member nearest the target L0 is ablated.
        chosen = nearest_to_target(ev.sweep(sweep), name, float(target)) if isinstance(name, list) else name
        rows = [r for r in ev.sweep(sweep) if r.get("group") == chosen]
        if not rows:
            raise DataError(f"no SAE named {chosen!r} in sweep {sweep!r}")
        check_target_reached(rows, chosen)  # halving the L0 of a collapsed code says nothing about the post's SAEs
        ivs = [ablation_increase(ev.roots[sweep] / r["folder"], keep, max_rows, n_boot, seed=i) for i, r in enumerate(rows)]
        est = float(np.mean([iv.estimate for iv in ivs]))
        # Seeds are independent: the mean's half-widths add in quadrature, divided by the seed count.
        lo_h = math.sqrt(sum((iv.estimate - iv.lo) ** 2 for iv in ivs)) / len(ivs)
        hi_h = math.sqrt(sum((iv.hi - iv.estimate) ** 2 for iv in ivs)) / len(ivs)
        return Interval(est, est - lo_h, est + hi_h, sum(iv.n for iv in ivs), "paired-bootstrap-blocks")
    return measure


@torch.no_grad()
def ablation_increase(folder: Path, keep: float, max_rows: int, n_boot: int, seed: int = 0) -> Interval:
    """NMSE(threshold-ablated) − NMSE(as trained) of one SAE on its held-out rows, paired bootstrap over row blocks."""
    record = read_saelab_record(folder)
    train_path = (record.get("train") or {}).get("activations")
    split = record.get("split") or {}
    if not train_path or "eval_rows" not in split:
        raise DataError(f"{folder}: its saelab.json records no training file and held-out rows")
    store = ActivationStore(train_path)
    lo, hi = (int(v) for v in split["eval_rows"])
    hi = min(hi, lo + max_rows)
    x = torch.as_tensor(np.asarray(store.read_range(lo, hi)), dtype=torch.float32)
    sae = load_sae(folder)
    z = sae.encode(x)
    nonzero = z[z > 0]
    if nonzero.numel() == 0:
        raise DataError(f"{folder}: the SAE encodes every held-out row to zero")
    t = float(torch.quantile(nonzero[torch.randperm(nonzero.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]], 1.0 - keep))
    dev = ((x - x.mean(0)) ** 2).sum(1).numpy()
    sse = ((x - sae.decode(z)) ** 2).sum(1).numpy()
    sse_ab = ((x - sae.decode(ablate_below(z, t))) ** 2).sum(1).numpy()
    a = block_parts({"sse": sse_ab, "dev": dev}, 200)
    b = block_parts({"sse": sse, "dev": dev}, 200)
    c = paired_bootstrap(a, b, lambda s: s["sse"] / s["dev"], "ablated", "trained", False, n_boot=n_boot, seed=seed)
    return comparison_interval(c, len(a["sse"]))


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def frontier_value(rows: list[dict], names: list[str], key: str, target: float) -> dict[int, float]:
    """Per seed: `key` on the L0 frontier of the named configurations (a grid of one knob), log–log interpolated at L0 = target.

    DataError when a seed's grid does not bracket the target (the curve would be extrapolated).
    """
    by_seed: dict[int, list[tuple[float, float]]] = {}
    for r in rows:
        if r.get("group") in names and _positive(r.get("l0")) and _positive(r.get(key)):
            by_seed.setdefault(int(r.get("seed") or 0), []).append((math.log(float(r["l0"])), math.log(float(r[key]))))
    if not by_seed:
        raise DataError(f"no rows of {names} with both l0 and {key}")
    lt = math.log(target)
    out = {}
    for seed, pts in sorted(by_seed.items()):
        pts.sort()
        xs = [p[0] for p in pts]
        if not xs[0] <= lt <= xs[-1]:
            raise DataError(f"seed {seed}: L0 of {names[0].rsplit(' ', 1)[0]} spans {math.exp(xs[0]):.3g}–{math.exp(xs[-1]):.3g}, "
                            f"not the target {target:g} (the grid does not bracket it at this budget)")
        out[seed] = float(math.exp(np.interp(lt, xs, [p[1] for p in pts])))
    return out


def frontier_difference(sweep: str, a: list[str], b: list[str], key: str, target: float,
                        transform: Callable[[float], float] | None = None) -> Callable[[Evidence], Interval]:
    """A measure: key(a) − key(b) on each grid's L0 frontier at L0 = target, paired by seed (shared batches), t over seeds."""
    def measure(ev: Evidence) -> Interval:
        rows = ev.sweep(sweep)
        if transform is not None:
            rows = [{**r, key: transform(r[key])} if _positive(r.get(key)) else r for r in rows]
        va, vb = frontier_value(rows, a, key, target), frontier_value(rows, b, key, target)
        seeds = sorted(set(va) & set(vb))
        if not seeds:
            raise DataError(f"no seed has both {a[0]!r} and {b[0]!r}")
        return seeds_interval([va[s] - vb[s] for s in seeds])
    return measure


def nearest_to_target(rows: list[dict], names: list[str], target: float, tolerance: float = 0.5) -> str:
    """The configuration of `names` whose mean L0 is nearest the target (DataError when none is within ±tolerance)."""
    means = {n: float(np.mean([r["l0"] for r in rows if r.get("group") == n and _positive(r.get("l0"))] or [0.0])) for n in names}
    best = min(means, key=lambda n: abs(math.log(max(means[n], 1e-6) / target)))
    if abs(means[best] - target) > tolerance * target:
        raise DataError(f"no configuration of {names} reached L0 {target:g} ± {tolerance:.0%} (nearest: {best!r} at {means[best]:.3g})")
    return best


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


def rank_correlation(sweep: str, reference: dict[str, float], key: str, n_boot: int = 2000, seed: int = 0) -> Callable[[Evidence], Interval]:
    """A measure: Spearman correlation between a paper's figure per configuration and our mean `key` per configuration.

    The interval resamples each configuration's seeds with replacement (a percentile bootstrap of
    the correlation of the means); with one seed per configuration it has no spread.
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
        est = spearman(ref, np.asarray([v.mean() for v in per]))
        if min(len(v) for v in per) < 2:
            return Interval(est, est, est, len(names), "single")
        rng = np.random.default_rng(seed)
        boots = [spearman(ref, np.asarray([rng.choice(v, size=len(v)).mean() for v in per])) for _ in range(n_boot)]
        lo, hi = np.percentile(boots, [2.5, 97.5])
        return Interval(est, float(min(lo, est)), float(max(hi, est)), len(names), "bootstrap-seeds")
    return measure


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their average rank; 0 when either side is constant)."""
    rx, ry = rankdata(np.asarray(x, dtype=np.float64)), rankdata(np.asarray(y, dtype=np.float64))
    sx, sy = rx.std(), ry.std()
    if sx == 0 or sy == 0:
        return 0.0
    return float(((rx - rx.mean()) * (ry - ry.mean())).mean() / (sx * sy))
