"""Scaling-law fits: recovery of known parameters, a reference solver, exclusion, rows, plots, the command."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saelab.commands.scaling import register
from saelab.errors import ConfigError, DataError
from saelab.experiments.scaling import (
    fit_joint,
    fit_power,
    fit_power_const,
    fit_rows,
    group_by,
    largest_stable_lr,
    plot_fit,
    read_results,
    row_value,
)

X = np.geomspace(256, 16384, 13)
JOINT_TRUE = {"alpha": 1.0, "beta_k": 0.3, "beta_n": -0.3, "gamma": -0.05, "zeta": -2.5, "eta": -0.3}


def _joint_grid(noise=0.0, seed=0):
    n, k = np.meshgrid(np.geomspace(256, 16384, 7), np.array([8.0, 16.0, 32.0, 64.0]))
    n, k = n.ravel(), k.ravel()
    p = JOINT_TRUE
    ln, lk = np.log(n), np.log(k)
    y = np.exp(p["alpha"] + p["beta_k"] * lk + p["beta_n"] * ln + p["gamma"] * lk * ln) + np.exp(
        p["zeta"] + p["eta"] * lk
    )
    return n, k, y * np.exp(np.random.default_rng(seed).normal(0.0, noise, y.size))


def _strict_json(obj) -> dict:
    """Dump without NaN and parse back."""
    return json.loads(json.dumps(obj, allow_nan=False))


# --- single-variable forms -----------------------------------------------------------------------


def test_power_recovers_known_law_with_noise():
    y = 3.0 * X**-0.6 * np.exp(np.random.default_rng(0).normal(0, 0.01, X.size))
    f = fit_power(X, y, n_boot=200)
    assert f.exponent == pytest.approx(-0.6, rel=0.05)
    assert f.coefficient == pytest.approx(3.0, rel=0.05)
    assert f.irreducible == 0.0
    lo, hi = f.exponent_ci
    assert lo < -0.6 < hi
    assert f.residual_rms == pytest.approx(0.01, rel=0.5)
    assert f.n_points == X.size and f.form == "power"


def test_power_matches_polyfit():
    rng = np.random.default_rng(1)
    y = 0.5 * X**0.7 * np.exp(rng.normal(0, 0.05, X.size))
    b, c = np.polyfit(np.log(X), np.log(y), 1)
    f = fit_power(X, y, n_boot=0)
    assert f.exponent == pytest.approx(b, rel=1e-10)
    assert f.coefficient == pytest.approx(math.exp(c), rel=1e-10)
    assert f.intervals["exponent"].method == "none"


def test_power_const_recovers_known_law_with_noise():
    y = 2.0 * X**-0.4 + 0.05
    y = y * np.exp(np.random.default_rng(2).normal(0, 0.002, X.size))
    f = fit_power_const(X, y, n_boot=100)
    assert f.exponent == pytest.approx(-0.4, rel=0.05)
    assert f.coefficient == pytest.approx(2.0, rel=0.05)
    assert f.irreducible == pytest.approx(0.05, rel=0.05)
    assert f.intervals["irreducible"].contains(0.05)
    assert f.exponent_ci[0] < -0.4 < f.exponent_ci[1]
    assert 0 <= f.irreducible < min(y)


@pytest.mark.parametrize(
    "a,b,e,x",
    [
        (2.0, -0.4, 0.05, X),
        (30.0, -0.25, 0.8, X),
        (1e4, -0.3, 1e-3, np.geomspace(1e15, 1e20, 9)),  # compute-sized x
        (0.02, 0.6, 5.0, np.geomspace(1e3, 1e6, 8)),  # increasing law, e.g. tokens to convergence
    ],
)
def test_power_const_matches_reference_solver(a, b, e, x):
    from scipy.optimize import curve_fit

    y = a * x**b + e
    ref, _ = curve_fit(lambda x, a, b, e: a * x**b + e, x, y, p0=[a * 1.3, b * 0.9, e * 0.7], maxfev=20000)
    f = fit_power_const(x, y, n_boot=0)
    np.testing.assert_allclose([f.coefficient, f.exponent, f.irreducible], ref, rtol=1e-3)
    np.testing.assert_allclose(f.predict(x), y, rtol=1e-8)


def test_power_const_without_irreducible_term():
    y = 2.0 * X**-0.5
    f = fit_power_const(X, y, n_boot=0)
    assert f.exponent == pytest.approx(-0.5, rel=1e-3)
    assert f.irreducible < 1e-3 * y.min()


def test_power_const_flags_irreducible_at_its_bound():
    # Falling then rising: the best log-space fit pushes e onto min(y); it must stay below it and say so.
    x = np.geomspace(256, 16384, 6)
    y = np.array([0.5, 0.2, 0.1, 0.2, 0.5, 0.6])
    f = fit_power_const(x, y, n_boot=0)
    assert f.irreducible_at_bound and f.irreducible < 0.1
    assert f.irreducible == pytest.approx(0.1, rel=1e-6)
    assert not fit_power_const(X, 2.0 * X**-0.4 + 0.05, n_boot=0).irreducible_at_bound


@given(st.floats(0.05, 20), st.floats(-1.0, -0.1), st.floats(0.05, 0.9), st.floats(1e-3, 1e3))
@settings(max_examples=15, deadline=None)
def test_power_const_is_scale_equivariant(a, b, e_share, scale):
    # e is a share of the smallest y so the irreducible term is identifiable at every draw.
    e = e_share * a * X[-1] ** b / (1 - e_share)
    y = a * X**b + e
    f = fit_power_const(X, y, n_boot=0)
    g = fit_power_const(X, scale * y, n_boot=0)
    assert g.exponent == pytest.approx(f.exponent, rel=1e-5, abs=1e-7)
    assert g.coefficient == pytest.approx(scale * f.coefficient, rel=1e-4)
    assert g.irreducible == pytest.approx(scale * f.irreducible, rel=1e-4, abs=1e-9 * scale)
    assert f.exponent == pytest.approx(b, rel=1e-3)


def test_bootstrap_is_seeded():
    y = 2.0 * X**-0.4 + 0.05
    y = y * np.exp(np.random.default_rng(3).normal(0, 0.01, X.size))
    a = fit_power_const(X, y, n_boot=30, seed=4)
    assert fit_power_const(X, y, n_boot=30, seed=4).intervals == a.intervals
    assert fit_power_const(X, y, n_boot=30, seed=5).intervals != a.intervals


# --- joint form ----------------------------------------------------------------------------------


def test_joint_recovers_known_parameters_noiseless():
    n, k, y = _joint_grid()
    f = fit_joint(n, k, y, n_boot=0)
    for name, value in JOINT_TRUE.items():
        assert getattr(f, name) == pytest.approx(value, rel=1e-4), name
    np.testing.assert_allclose(f.predict(n, k), y, rtol=1e-8)
    assert f.exponent_n(8.0) == pytest.approx(-0.3 - 0.05 * math.log(8.0), rel=1e-4)
    assert f.irreducible(16.0) == pytest.approx(math.exp(-2.5 - 0.3 * math.log(16.0)), rel=1e-4)


def test_joint_with_noise_within_five_percent_and_intervals():
    n, k, y = _joint_grid(noise=0.001, seed=6)
    f = fit_joint(n, k, y, n_boot=60, seed=7)
    for name, value in JOINT_TRUE.items():
        assert getattr(f, name) == pytest.approx(value, rel=0.05), name
    d = _strict_json(f.to_dict())
    for name in JOINT_TRUE:
        assert d[name] is not None and len(d[f"{name}_ci"]) == 2
        assert d["intervals"][name]["method"] == "bootstrap-points"
    assert d["n_points"] == 28


def test_joint_needs_enough_distinct_sizes():
    with pytest.raises(DataError, match="distinct"):
        fit_joint([256, 512, 256, 512, 256, 512], [8, 8, 16, 16, 32, 32], [1, 2, 3, 4, 5, 6], n_boot=0)


# --- exclusion -----------------------------------------------------------------------------------


def _planted(offset=1.6, noise=0.003, seed=8):
    y = (2.0 * X**-0.4 + 0.05) * np.exp(np.random.default_rng(seed).normal(0, noise, X.size))
    y[0] *= offset  # the smallest size is off trend, as in the paper's L(C) fits
    return y


def test_auto_exclusion_drops_planted_off_trend_point():
    y = _planted()
    f = fit_power_const(X, y, exclude="auto", n_boot=0)
    assert f.excluded_x == (X[0],) and f.excluded_y == (y[0],)
    assert f.n_points == X.size - 1
    assert f.exponent == pytest.approx(-0.4, rel=0.05)
    kept = fit_power_const(X, y, n_boot=0)
    assert kept.excluded_x == () and kept.residual_rms > 5 * f.residual_rms


def test_auto_exclusion_keeps_on_trend_data():
    f = fit_power_const(X, _planted(offset=1.0), exclude="auto", n_boot=0)
    assert f.excluded_x == ()
    g = fit_power(X, 2.0 * X**-0.4, exclude="auto", n_boot=0)  # noiseless: rounding is never off trend
    assert g.excluded_x == ()


def test_auto_exclusion_drops_at_most_a_third():
    y = 2.0 * X**-0.4 * np.exp(np.random.default_rng(9).normal(0, 0.003, X.size))
    # Six off-trend small sizes, each far worse than the next, but only 13 // 3 = 4 points may go.
    y[:6] *= [1e4, 1e3, 1e2, 10.0, 3.0, 1.5]
    f = fit_power(X, y, exclude="auto", n_boot=0)
    assert f.excluded_x == tuple(X[:4])


def test_fixed_exclusion_drops_smallest_sizes_with_all_their_points():
    x = np.repeat(X, 2)  # two seeds per size
    y = 2.0 * x**-0.4 + 0.05
    f = fit_power_const(x, y, exclude=2, n_boot=0)
    assert sorted(f.excluded_x) == [X[0], X[0], X[1], X[1]]
    assert f.n_points == x.size - 4


def test_joint_auto_exclusion_drops_smallest_n():
    n, k, y = _joint_grid(noise=0.001, seed=10)
    y = np.where(n == n.min(), y * 1.5, y)
    f = fit_joint(n, k, y, exclude="auto", n_boot=0)
    assert set(f.excluded_n) == {n.min()} and len(f.excluded_n) == 4
    assert f.beta_n == pytest.approx(JOINT_TRUE["beta_n"], rel=0.05)


SIZES = np.array([256.0, 512.0, 1024.0, 2048.0, 4096.0])  # the scaling reproduction's full sizes


def _false_exclusions(fit, seeds: int, sigma: float, reps: int, const: float = 0.0, seed: int = 0) -> int:
    """How many of `reps` exact power laws (plus `const`) with log-normal noise sigma lose a size to exclude="auto"."""
    rng = np.random.default_rng(seed)
    x = np.repeat(SIZES, seeds)
    bad = 0
    for _ in range(reps):
        y = (0.9 * x**-0.3 + const) * np.exp(rng.normal(0.0, sigma, x.size))
        bad += bool(fit(x, y, exclude="auto", n_boot=0).excluded_x)
    return bad


def _binomial_upper(k: int, n: int, level: float = 0.95) -> float:
    """One-sided upper Clopper–Pearson bound of a rate seen k times in n."""
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(level, k + 1, n - k))


@pytest.mark.parametrize("seeds,sigma", [(1, 0.01), (1, 0.1), (3, 0.03)])
def test_auto_exclusion_rarely_drops_a_size_of_an_exact_power_law(seeds, sigma):
    # Noise from 1% to 10% in log spans the project's seed-to-seed NMSE spread; the old rule dropped sizes in 38% of such fits.
    bad = _false_exclusions(fit_power, seeds, sigma, reps=400, seed=seeds)
    assert _binomial_upper(bad, 400) <= 0.05, bad


def test_auto_exclusion_rarely_drops_a_size_of_an_exact_power_plus_constant():
    bad = _false_exclusions(fit_power_const, 1, 0.02, reps=60, const=0.05)  # the old rule: 65% with one seed
    assert bad <= 3, bad


def test_joint_gamma_measure_recovers_gamma_with_its_interval():
    from saelab.experiments.reproduce.claims import Evidence
    from saelab.experiments.reproduce.scaling_laws import joint_gamma

    rng = np.random.default_rng(3)
    p = JOINT_TRUE
    rows = []
    for n in (256.0, 1024.0, 4096.0, 16384.0):
        for k in (8.0, 32.0):
            for s in range(3):
                ln, lk = math.log(n), math.log(k)
                y = math.exp(p["alpha"] + p["beta_k"] * lk + p["beta_n"] * ln + p["gamma"] * lk * ln) + math.exp(
                    p["zeta"] + p["eta"] * lk
                )
                rows.append(
                    {
                        "group": f"topk k{k:g} n{n:g}",
                        "n_latents": n,
                        "params": {"k": k},
                        "seed": s,
                        "nmse": y * math.exp(rng.normal(0.0, 0.005)),
                    }
                )
    iv = joint_gamma("sizes", sorted({r["group"] for r in rows}), n_boot=100)(Evidence({"sizes": rows}))
    assert iv.estimate == pytest.approx(p["gamma"], abs=0.02)
    assert iv.lo < iv.estimate < iv.hi and iv.lo <= p["gamma"] <= iv.hi and iv.n == len(rows)


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fit,x,y,match",
    [
        (fit_power, [1.0], [1.0], "needs at least 2"),
        (fit_power_const, [1.0, 2.0], [1.0, 0.5], "needs at least 3"),
        (fit_power_const, [1.0, 1.0, 2.0, 2.0], [1.0, 1.1, 0.5, 0.6], "distinct x"),
        (fit_power, [1.0, 0.0, 2.0], [1.0, 1.0, 1.0], r"x\[1\]=0.0"),
        (fit_power, [1.0, 2.0, 3.0], [1.0, -1.0, 1.0], r"y\[1\]=-1.0"),
        (fit_power, [1.0, 2.0, 3.0], [1.0, math.nan, 1.0], r"y\[1\]=nan"),
        (fit_power, [1.0, 2.0, 3.0], [1.0, 2.0], "3 values but y has 2"),
    ],
)
def test_bad_data(fit, x, y, match):
    with pytest.raises(DataError, match=match):
        fit(x, y, n_boot=0)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"exclude": -1}, "exclude"),
        ({"exclude": "some"}, "exclude"),
        ({"exclude": 13}, "exclude"),
        ({"n_boot": -1}, "n_boot"),
        ({"level": 1.0}, "level"),
    ],
)
def test_bad_options(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        fit_power(X, X**-0.5, **{"n_boot": 0, **kwargs})


def test_json_is_strict_even_without_intervals():
    f = fit_power_const(X, 2.0 * X**-0.4 + 0.05, n_boot=0)
    d = _strict_json(f.to_dict())
    assert d["exponent"] == pytest.approx(-0.4, rel=1e-4)
    assert d["exponent_ci"] == [None, None]  # no resamples: the interval is unknown, not NaN
    for key in ("coefficient", "exponent", "irreducible", "exponent_ci", "n_points", "residual_rms"):
        assert key in d


# --- rows ----------------------------------------------------------------------------------------


def _rows(noise=0.002, seed=11):
    rng = np.random.default_rng(seed)
    rows = []
    for k, (a, b, e) in {16: (3.0, -0.35, 0.08), 32: (2.0, -0.45, 0.04)}.items():
        for n in X:
            nmse = (a * n**b + e) * math.exp(rng.normal(0, noise))
            rows.append(
                {"n_latents": int(n), "flops": float(n) * 1e12, "nmse": nmse, "params": {"k": k}, "method": "topk"}
            )
    rows.append({"n_latents": 1024, "params": {"k": 16}, "nmse": None})  # a run without a result
    rows.append({"n_latents": 2048, "method": "relu", "nmse": 0.3})  # no k at all
    return rows


def test_row_value_lookup():
    row = {"n_latents": 4, "flops": 7.0, "params": {"k": 32, "lr": 1e-3}, "k": 16}
    assert row_value(row, "k") == 16  # top level wins
    assert row_value({"params": {"k": 32}}, "k") == 32
    assert row_value(row, "compute") == 7.0
    assert row_value(row, "params.lr") == 1e-3
    assert row_value(row, "missing") is None


def test_group_by_labels():
    groups = group_by([{"params": {"k": 32.0}}, {"k": 32}, {"k": 8}, {}], "k")
    assert list(groups) == ["8", "32", "none"]
    assert len(groups["32"]) == 2
    assert list(group_by([{}, {}], None)) == ["all"]


def test_fit_rows_by_k_recovers_each_group():
    fits = fit_rows(_rows(), "n_latents", "nmse", by="k", form="power+const", n_boot=0)
    assert list(fits) == ["16", "32"]  # the row without k is in no group
    assert fits["16"].exponent == pytest.approx(-0.35, rel=0.05)
    assert fits["32"].exponent == pytest.approx(-0.45, rel=0.05)
    assert fits["16"].n_skipped == 1 and fits["32"].n_skipped == 0
    assert fits["16"].group == "16" and fits["16"].x_key == "n_latents" and fits["16"].y_key == "nmse"


def test_fit_rows_compute_alias_and_skips():
    rows = [r for r in _rows() if r.get("params", {}).get("k") == 32]
    f = fit_rows(rows, "compute", "nmse", form="power+const", n_boot=0)["all"]
    assert f.exponent == pytest.approx(-0.45, rel=0.05)
    assert min(f.x) == pytest.approx(256e12)
    with pytest.raises(DataError, match="no row has numeric tokens"):
        fit_rows(rows, "tokens", "nmse", n_boot=0)


def test_fit_rows_errors_name_the_group_and_row():
    rows = [{"n_latents": n, "nmse": 0.1, "params": {"k": 8}} for n in (256, 512)]
    with pytest.raises(DataError, match="group k=8.*needs at least 3"):
        fit_rows(rows, "n_latents", "nmse", by="k", n_boot=0)
    bad = [{"n_latents": 256, "ce_delta": -0.01, "_source": "r.jsonl:3"}]
    with pytest.raises(DataError, match="r.jsonl:3: ce_delta=-0.01 is not positive"):
        fit_rows(bad, "n_latents", "ce_delta", n_boot=0)
    with pytest.raises(ConfigError, match="form"):
        fit_rows(rows, "n_latents", "nmse", form="cubic")


def test_fit_rows_joint():
    n, k, y = _joint_grid(noise=0.0005, seed=12)
    rows = [{"n_latents": float(a), "params": {"k": float(b)}, "mse": float(c)} for a, b, c in zip(n, k, y)]
    f = fit_rows(rows, "n_latents", "mse", form="joint", n_boot=0)["all"]
    assert f.beta_n == pytest.approx(JOINT_TRUE["beta_n"], rel=0.05)
    assert f.y_key == "mse"


def test_read_results(tmp_path):
    p = tmp_path / "results.jsonl"
    p.write_text('{"n_latents": 1, "nmse": 0.5}\n\n{"n_latents": 2, "nmse": NaN}\n')
    rows = read_results([p])
    assert len(rows) == 2 and rows[1]["_source"] == f"{p}:3"
    p.write_text('{"n_latents": 1}\n{"n_latents": 2,\n')
    with pytest.raises(DataError, match=r"results.jsonl:2: not valid JSON"):
        read_results([p])
    p.write_text("[1, 2]\n")
    with pytest.raises(DataError, match="results.jsonl:1: expected a JSON object"):
        read_results([p])
    with pytest.raises(DataError, match="no such file"):
        read_results([tmp_path / "missing.jsonl"])
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no result rows"):
        read_results([tmp_path / "empty.jsonl"])


# --- learning rate -------------------------------------------------------------------------------


def _lr_sweep(top_factor=4.0):
    """Runs at lr on a grid per n; runs above 0.2/sqrt(n) diverge, the one just below is noticeably worse."""
    rows = []
    for n in (256, 1024, 4096, 16384):
        lr_true = 0.2 / math.sqrt(n)
        for lr in lr_true * np.array([0.125, 0.25, 0.5, 1.0, 2.0, top_factor]):
            if lr > lr_true * 1.01:
                rows.append({"n_latents": n, "lr": lr, "diverged": True, "loss": None, "nmse": None})
            else:
                rows.append({"n_latents": n, "lr": lr, "loss": 0.1, "nmse": 0.1 * (1 + (lr / lr_true) ** 2 * 0.3)})
    return rows


def _grid_sweep():
    """A realistic sweep: one fixed lr grid (half-octave steps) for every n; runs above 0.2/sqrt(n) diverge."""
    grid = 1e-4 * 2 ** (np.arange(16) / 2)
    rows = []
    for n in (256, 600, 1500, 4000, 9000, 20000):
        for lr in grid:
            stable = lr <= 0.2 / math.sqrt(n)
            rows.append({"n_latents": n, "lr": float(lr), "diverged": not stable, "nmse": 0.1 if stable else None})
    return rows


def test_largest_stable_lr_finds_inverse_sqrt():
    res = largest_stable_lr(_lr_sweep(), n_boot=0)
    assert [p.lr_max for p in res.points] == pytest.approx([0.2 / math.sqrt(n) for n in (256, 1024, 4096, 16384)])
    assert res.fit.exponent == pytest.approx(-0.5, rel=1e-6)
    assert not any(p.censored for p in res.points)
    assert _strict_json(res.to_dict())["points"][0]["n_stable"] == 4
    # On a fixed lr grid lr_max is a staircase under 0.2/sqrt(n); the trend is still -1/2 within its interval.
    grid = largest_stable_lr(_grid_sweep(), n_boot=200)
    assert grid.fit.exponent == pytest.approx(-0.5, abs=0.05)
    assert grid.inverse_sqrt_in_ci is True
    assert all(p.lr_max <= 0.2 / math.sqrt(p.n_latents) < p.lr_max * math.sqrt(2) for p in grid.points)


def test_largest_stable_lr_tolerance_and_flags():
    rows = _lr_sweep()
    # nmse at the largest finished lr is 0.13 vs best ~0.1005: beyond a tolerance of 1.2 it is not "stable".
    strict = largest_stable_lr(rows, tolerance=1.2, n_boot=0)
    assert strict.inverse_sqrt_in_ci is None  # no resamples, no interval to test -1/2 against
    assert strict.points[0].lr_max == pytest.approx(0.5 * 0.2 / 16)
    # A finite nmse with a non-finite loss (NaN read back from JSON) is not finished.
    rows = [dict(r) for r in rows]
    for r in rows:
        if not r.get("diverged") and r["lr"] == max(
            x["lr"] for x in rows if x["n_latents"] == r["n_latents"] and not x.get("diverged")
        ):
            r["loss"] = math.nan
    assert largest_stable_lr(rows, n_boot=0).points[0].lr_max == pytest.approx(0.5 * 0.2 / 16)
    # Largest lr tried still stable: only a lower bound.
    no_top = [r for r in _lr_sweep() if not r.get("diverged")]
    assert all(p.censored for p in largest_stable_lr(no_top, n_boot=0).points)


def test_largest_stable_lr_needs_two_sizes():
    with pytest.raises(DataError, match="need at least 2"):
        largest_stable_lr([{"n_latents": 256, "lr": 1e-3, "nmse": 0.1}], n_boot=0)
    with pytest.raises(ConfigError, match="tolerance"):
        largest_stable_lr(_lr_sweep(), tolerance=0.5)


# --- plot ----------------------------------------------------------------------------------------


def test_plot_fit_writes_png(tmp_path):
    fits = fit_rows(_rows(), "n_latents", "nmse", by="k", form="power+const", exclude=1, n_boot=0)
    n, k, y = _joint_grid()
    joint = fit_joint(n, k, y, exclude=1, n_boot=0)
    for name, res in (("by_k.png", fits), ("joint.png", joint)):
        path = tmp_path / "sub" / name
        plot_fit(res, _rows(), path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".tmp-")]


# --- command -------------------------------------------------------------------------------------


def _run(argv, capsys):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    register(sub)
    args = p.parse_args(argv)
    rc = args.func(args)
    return rc, capsys.readouterr().out


def _write_rows(path, rows):
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}) + "\n" for r in rows))


def test_command_fit_json(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    rows = [r for r in _rows() if "params" in r]
    _write_rows(a, rows[:10])
    _write_rows(b, rows[10:])
    rc, out = _run(
        [
            "scaling",
            "fit",
            str(a),
            str(b),
            "--by",
            "k",
            "--json",
            "--n-boot",
            "20",
            "--exclude",
            "auto",
            "--plot",
            str(tmp_path / "fit.png"),
        ],
        capsys,
    )
    assert rc == 0
    d = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert list(d["groups"]) == ["16", "32"]
    g = d["groups"]["32"]
    assert g["exponent"] == pytest.approx(-0.45, rel=0.05)
    assert len(g["exponent_ci"]) == 2 and g["n_points"] + g["n_excluded"] == 13
    assert d["groups"]["16"]["n_skipped"] == 1
    assert (tmp_path / "fit.png").exists()


def test_command_fit_table_and_compute(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    _write_rows(path, [r for r in _rows() if r.get("params", {}).get("k") == 16])
    rc, out = _run(["scaling", "fit", str(path), "--x", "compute", "--form", "power", "--n-boot", "0"], capsys)
    assert rc == 0
    assert "exponent [95%]" in out and "nmse vs compute" in out


def test_command_fit_joint_table(tmp_path, capsys):
    n, k, y = _joint_grid()
    path = tmp_path / "r.jsonl"
    _write_rows(
        path, [{"n_latents": float(a), "params": {"k": float(b)}, "nmse": float(c)} for a, b, c in zip(n, k, y)]
    )
    rc, out = _run(["scaling", "fit", str(path), "--form", "joint", "--n-boot", "0"], capsys)
    assert rc == 0 and "beta_n" in out and "gamma" in out


def test_command_errors(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_text('{"n_latents": 256, "nmse": 0.1}\nnot json\n')
    with pytest.raises(DataError, match=r"r.jsonl:2"):
        _run(["scaling", "fit", str(path)], capsys)
    with pytest.raises(SystemExit):
        _run(["scaling", "fit", str(path), "--exclude", "-1"], capsys)
    with pytest.raises(SystemExit):
        _run(["scaling", "fit", str(path), "--form", "cubic"], capsys)
    capsys.readouterr()


def test_command_lr(tmp_path, capsys):
    path = tmp_path / "sweep.jsonl"
    _write_rows(path, _grid_sweep())
    rc, out = _run(["scaling", "lr", str(path), "--json", "--n-boot", "20"], capsys)
    d = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert rc == 0 and d["inverse_sqrt_in_ci"] and d["fit"]["exponent"] == pytest.approx(-0.5, abs=0.05)
    rc, out = _run(["scaling", "lr", str(path), "--n-boot", "30"], capsys)
    assert "consistent with the paper's 1/sqrt(n)" in out and "not consistent" not in out
    rc, out = _run(["scaling", "lr", str(path), "--n-boot", "0"], capsys)
    assert "no interval" in out
