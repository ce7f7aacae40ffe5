"""Intervals and comparisons: coverage on simulated data, a reference bootstrap, verdicts, JSON safety."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saelab.errors import ConfigError, DataError
from saelab.util.comparisons import (
    Comparison,
    adjust_family,
    compare_intervals,
    compare_seeds,
    holm,
    p_from_interval,
    paired_bootstrap,
    seeds_test,
)
from saelab.util.intervals import (
    NOT_SEPARABLE,
    Interval,
    block_parts,
    bootstrap_sums,
    format_interval,
    normal_quantile,
    seeds_interval,
    unit_parts,
)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


def _ratio(s):
    return s["err"] / s["var"]


def _mean(s):
    return s["x"] / s["one"]


# --- seeds interval -------------------------------------------------------------------------------


def test_seeds_interval_hand_computed():
    # mean 2, sd 1, n 3: half = t_{0.975, 2} * 1 / sqrt(3) = 4.302653 / 1.732051 = 2.484138
    iv = seeds_interval([1.0, 2.0, 3.0])
    assert iv.estimate == pytest.approx(2.0)
    assert iv.hi - iv.estimate == pytest.approx(2.484138, rel=1e-6)
    assert iv.estimate - iv.lo == pytest.approx(2.484138, rel=1e-6)
    assert (iv.n, iv.method) == (3, "seeds-t")


def test_single_seed_is_degenerate():
    iv = seeds_interval([0.25])
    assert (iv.estimate, iv.lo, iv.hi, iv.n, iv.method) == (0.25, 0.25, 0.25, 1, "single")


def test_seeds_interval_coverage():
    rng = np.random.default_rng(1)
    covered = sum(seeds_interval(rng.normal(3.0, 2.0, size=5)).contains(3.0) for _ in range(400))
    assert 0.88 * 400 <= covered <= 0.99 * 400


@given(st.lists(finite, min_size=2, max_size=20))
@settings(max_examples=60, deadline=None)
def test_seeds_interval_brackets_mean(values):
    iv = seeds_interval(values)
    assert iv.lo <= iv.estimate <= iv.hi
    assert iv.half_width() >= 0


@pytest.mark.parametrize("bad", [[], [1.0, math.nan], [math.inf]])
def test_seeds_interval_bad_values(bad):
    with pytest.raises(DataError):
        seeds_interval(bad)


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, -0.1, "x"])
def test_bad_level(level):
    with pytest.raises(ConfigError, match="level"):
        seeds_interval([1.0, 2.0], level=level)


# --- bootstrap ------------------------------------------------------------------------------------


def test_bootstrap_mean_coverage():
    rng = np.random.default_rng(2)
    n_sim, covered = 200, 0
    for i in range(n_sim):
        x = rng.normal(1.0, 1.0, size=60)
        iv = bootstrap_sums({"x": x, "one": np.ones_like(x)}, _mean, n_boot=400, seed=i)
        covered += iv.contains(1.0)
    assert 0.88 * n_sim <= covered <= 0.99 * n_sim


def _reference_ratio_bootstrap(err, var, n_boot, seed, level=0.95):
    """Slow reference: explicit index resampling, one replicate at a time."""
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        idx = rng.integers(0, err.size, size=err.size)
        reps.append(err[idx].sum() / var[idx].sum())
    return np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])


def test_bootstrap_ratio_matches_reference_loop():
    rng = np.random.default_rng(3)
    var = rng.gamma(2.0, 1.0, size=300)
    err = 0.1 * var * rng.gamma(3.0, 1.0, size=300)
    iv = bootstrap_sums({"err": err, "var": var}, _ratio, n_boot=2000, seed=4)
    lo, hi = _reference_ratio_bootstrap(err, var, 2000, seed=5)
    assert iv.estimate == pytest.approx(err.sum() / var.sum(), rel=1e-12)
    width = hi - lo
    # Different random draws: endpoints agree to Monte-Carlo error, a few percent of the width.
    assert iv.lo == pytest.approx(lo, abs=0.1 * width)
    assert iv.hi == pytest.approx(hi, abs=0.1 * width)
    assert (iv.n, iv.method) == (300, "bootstrap-rows")


def test_bootstrap_is_seeded_and_chunk_independent(monkeypatch):
    import saelab.util.intervals as mod

    rng = np.random.default_rng(6)
    parts = {"err": rng.random(50), "var": rng.random(50) + 0.5}
    a = bootstrap_sums(parts, _ratio, n_boot=300, seed=7)
    assert bootstrap_sums(parts, _ratio, n_boot=300, seed=7) == a
    assert bootstrap_sums(parts, _ratio, n_boot=300, seed=8) != a
    # Small chunks draw the same total replicates; the interval stays statistically the same.
    monkeypatch.setattr(mod, "_CHUNK_ELEMENTS", 60)
    b = bootstrap_sums(parts, _ratio, n_boot=300, seed=7)
    assert b.estimate == a.estimate
    assert b.lo == pytest.approx(a.lo, abs=0.2 * (a.hi - a.lo))


def test_bootstrap_vector_parts():
    # [U, m] parts: stat sees [r, m] sums; here the mean of column 1.
    rng = np.random.default_rng(9)
    x = rng.normal(size=(80, 3))
    iv = bootstrap_sums({"x": x, "one": np.ones(80)}, lambda s: s["x"][:, 1] / s["one"], n_boot=200)
    assert iv.estimate == pytest.approx(x[:, 1].mean())
    assert iv.lo < iv.estimate < iv.hi


@given(
    st.lists(st.floats(min_value=-100, max_value=100, allow_nan=False), min_size=1, max_size=30), st.integers(0, 2**31)
)
@settings(max_examples=40, deadline=None)
def test_bootstrap_mean_brackets_estimate(values, seed):
    x = np.asarray(values)
    iv = bootstrap_sums({"x": x, "one": np.ones_like(x)}, _mean, n_boot=200, seed=seed)
    tol = 1e-9 * (1 + np.abs(x).max())
    assert iv.lo - tol <= iv.estimate <= iv.hi + tol
    assert x.min() - tol <= iv.lo and iv.hi <= x.max() + tol


def test_bootstrap_bad_inputs():
    with pytest.raises(DataError, match="units"):
        bootstrap_sums({"err": np.ones(3), "var": np.ones(4)}, _ratio)
    with pytest.raises(DataError, match="non-finite"):
        bootstrap_sums({"err": np.array([1.0, np.nan]), "var": np.ones(2)}, _ratio)
    with pytest.raises(ConfigError, match="n_boot"):
        bootstrap_sums({"err": np.ones(3), "var": np.ones(3)}, _ratio, n_boot=0)
    with pytest.raises(ConfigError, match="stat"):
        bootstrap_sums({"err": np.ones(3), "var": np.ones(3)}, lambda s: np.zeros(7))
    # The denominator is zero in every replicate: no interval.
    with pytest.raises(DataError, match="not finite"):
        bootstrap_sums({"err": np.ones(3), "var": np.zeros(3)}, _ratio)


# --- block and unit parts -------------------------------------------------------------------------


def test_block_parts_hand_computed():
    out = block_parts({"a": np.arange(10.0)}, n_blocks=3)
    np.testing.assert_array_equal(out["a"], [0 + 1 + 2, 3 + 4 + 5, 6 + 7 + 8 + 9])


@given(st.integers(1, 300), st.integers(1, 50), st.integers(0, 1000))
@settings(max_examples=60, deadline=None)
def test_block_parts_sum_to_total(n_rows, n_blocks, seed):
    rng = np.random.default_rng(seed)
    per_row = {"a": rng.normal(size=n_rows), "b": rng.normal(size=(n_rows, 2))}
    out = block_parts(per_row, n_blocks=n_blocks)
    assert out["a"].shape == (min(n_blocks, n_rows),)
    assert out["b"].shape == (min(n_blocks, n_rows), 2)
    np.testing.assert_allclose(out["a"].sum(), per_row["a"].sum(), atol=1e-9)
    np.testing.assert_allclose(out["b"].sum(0), per_row["b"].sum(0), atol=1e-9)


def test_block_parts_bad_inputs():
    with pytest.raises(ConfigError, match="n_blocks"):
        block_parts({"a": np.ones(3)}, n_blocks=0)
    with pytest.raises(DataError, match="length"):
        block_parts({"a": np.ones(3), "b": np.ones(4)})


def test_unit_parts_sums_per_game():
    out = unit_parts({"a": np.array([1.0, 2.0, 3.0, 4.0])}, units=[7, 7, 2, 7])
    np.testing.assert_array_equal(out["a"], [3.0, 7.0])  # game 2, then game 7


def test_block_bootstrap_is_wider_on_correlated_rows():
    # Rows within a game share a game effect: resampling rows understates the spread, blocks do not.
    rng = np.random.default_rng(10)
    games = rng.normal(size=200)
    x = np.repeat(games, 50) + 0.1 * rng.normal(size=200 * 50)
    one = np.ones_like(x)
    rows = bootstrap_sums({"x": x, "one": one}, _mean, n_boot=300)
    blocks = bootstrap_sums(block_parts({"x": x, "one": one}, 200), _mean, n_boot=300, method="bootstrap-blocks")
    assert blocks.half_width() > 3 * rows.half_width()
    assert blocks.method == "bootstrap-blocks" and blocks.n == 200


# --- comparisons ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lo,hi,higher,verdict",
    [
        (0.1, 0.3, True, "A beats B"),
        (0.1, 0.3, False, "B beats A"),
        (-0.3, -0.1, True, "B beats A"),
        (-0.3, -0.1, False, "A beats B"),
        (-0.1, 0.3, True, NOT_SEPARABLE),
        (0.0, 0.3, True, NOT_SEPARABLE),
    ],
)
def test_verdict_rule(lo, hi, higher, verdict):
    # b has zero width, so the difference interval is exactly a's interval shifted by -1.
    h, centre = (hi - lo) / 2, (lo + hi) / 2 + 1.0
    a = Interval(centre, centre - h, centre + h, 10, "x")
    b = Interval(1.0, 1.0, 1.0, 10, "x")
    c = compare_intervals(a, b, "A", "B", higher)
    assert c.lo == pytest.approx(lo) and c.hi == pytest.approx(hi)
    assert c.verdict == verdict
    assert c.separable() == (verdict != NOT_SEPARABLE)


def test_compare_intervals_hypotenuse():
    a = Interval(0.10, 0.07, 0.13, 5, "seeds-t")
    b = Interval(0.20, 0.16, 0.24, 5, "seeds-t")
    c = compare_intervals(a, b, "topk", "relu", higher_is_better=False)
    assert c.diff == pytest.approx(-0.10)
    assert c.hi == pytest.approx(-0.10 + 0.05)  # sqrt(0.03^2 + 0.04^2)
    assert c.verdict == "topk beats relu" and c.method == "independent-intervals"


def test_compare_intervals_single_never_separable():
    c = compare_intervals(Interval(1.0, 1.0, 1.0, 1, "single"), Interval(2.0, 2.0, 2.0, 1, "single"), "a", "b", True)
    assert c.verdict == NOT_SEPARABLE
    d = c.to_dict()
    assert d["lo"] is None and d["hi"] is None and d["diff"] == -1.0


def test_compare_seeds_welch_hand_computed():
    # a: mean 2, var 1, n 3; b: mean 5, var 4, n 3 -> se^2 = 1/3 + 4/3 = 5/3;
    # df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 2.777778/0.944444 = 2.941176; t_{0.975, 2.941176} = 3.2353
    c = compare_seeds([1, 2, 3], [3, 5, 7], "a", "b", higher_is_better=True)
    from scipy.stats import t

    half = t.ppf(0.975, 2.941176470588) * math.sqrt(5 / 3)
    assert c.diff == pytest.approx(-3.0)
    assert c.lo == pytest.approx(-3.0 - half, rel=1e-9)
    assert c.hi == pytest.approx(-3.0 + half, rel=1e-9)
    assert c.verdict == NOT_SEPARABLE  # half is about 4.2


def test_compare_seeds_separates_clear_difference():
    c = compare_seeds([0.10, 0.11, 0.09], [0.20, 0.21, 0.19], "topk", "relu", higher_is_better=False)
    assert c.verdict == "topk beats relu"
    c = compare_seeds([0.10, 0.11, 0.09], [0.20, 0.21, 0.19], "topk", "relu", higher_is_better=True)
    assert c.verdict == "relu beats topk"


def test_compare_seeds_one_seed_is_not_separable_and_json_safe():
    c = compare_seeds([0.1], [0.5, 0.6], "a", "b", higher_is_better=False)
    assert c.verdict == NOT_SEPARABLE and not c.separable()
    d = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    assert d["lo"] is None and d["hi"] is None
    assert d["diff"] == pytest.approx(-0.45)


def test_compare_seeds_coverage():
    rng = np.random.default_rng(11)
    covered = 0
    for _ in range(300):
        c = compare_seeds(rng.normal(1.0, 1.0, 4), rng.normal(0.5, 3.0, 6), "a", "b", True)
        covered += c.lo <= 0.5 <= c.hi
    assert 0.88 * 300 <= covered <= 0.99 * 300


def test_paired_bootstrap_uses_same_units():
    # b = a + a small constant on every row: unpaired intervals overlap, the paired one does not.
    rng = np.random.default_rng(12)
    var = rng.gamma(2.0, 1.0, 400)
    err_a = var * rng.gamma(2.0, 0.05, 400)
    err_b = err_a + 0.002 * var
    pa, pb = {"err": err_a, "var": var}, {"err": err_b, "var": var}
    c = paired_bootstrap(pa, pb, _ratio, "a", "b", higher_is_better=False, n_boot=400)
    assert c.diff == pytest.approx(-0.002, rel=1e-9)
    assert c.lo == pytest.approx(-0.002) and c.hi == pytest.approx(-0.002)  # difference is exact per replicate
    assert c.verdict == "a beats b"
    unpaired = compare_intervals(
        bootstrap_sums(pa, _ratio, n_boot=400),
        bootstrap_sums(pb, _ratio, n_boot=400, seed=1),
        "a",
        "b",
        higher_is_better=False,
    )
    assert unpaired.verdict == NOT_SEPARABLE


def test_paired_bootstrap_unit_mismatch():
    with pytest.raises(DataError):
        paired_bootstrap({"x": np.ones(3)}, {"x": np.ones(4)}, lambda s: s["x"], "a", "b", True)


# --- serialisation and formatting -----------------------------------------------------------------


@given(finite, finite, finite, st.integers(1, 10**6))
def test_interval_dict_round_trip(e, x, y, n):
    lo, hi = min(x, y), max(x, y)
    iv = Interval(e, lo, hi, n, "bootstrap-games")
    assert Interval.from_dict(json.loads(json.dumps(iv.to_dict(), allow_nan=False))) == iv


def test_interval_dict_never_has_nan():
    iv = Interval(math.nan, -math.inf, math.inf, 0, "single")
    d = iv.to_dict()
    json.dumps(d, allow_nan=False)
    assert d == {"estimate": None, "lo": None, "hi": None, "n": 0, "method": "single"}
    back = Interval.from_dict(d)
    assert math.isnan(back.estimate) and math.isnan(back.lo)


def test_from_dict_bad():
    with pytest.raises(DataError, match="interval"):
        Interval.from_dict({"estimate": 1.0})


def test_interval_contains_and_half_width():
    iv = Interval(1.0, 0.5, 2.0, 3, "x")
    assert iv.half_width() == 1.0
    assert iv.contains(0.5) and iv.contains(2.0) and not iv.contains(2.01)


@pytest.mark.parametrize(
    "iv,digits,text",
    [
        (Interval(0.0930, 0.0889, 0.0971, 5, "seeds-t"), None, "0.0930 ± 0.0041"),
        (Interval(0.5, 0.2, 0.8, 5, "seeds-t"), None, "0.50 ± 0.30"),
        (Interval(123.456, 120.0, 125.0, 5, "seeds-t"), None, "123.5 ± 3.5"),
        (Interval(0.0930, 0.0889, 0.0971, 5, "seeds-t"), 2, "0.09 ± 0.00"),
        (Interval(0.123456, 0.123456, 0.123456, 1, "single"), None, "0.123"),
        (Interval(0.0, 0.0, 0.0, 1, "single"), None, "0"),  # a count of zero, e.g. the demo's ReLU+L1
        (None, None, "–"),
        (Interval(math.nan, math.nan, math.nan, 0, "single"), None, "–"),
    ],
)
def test_format_interval(iv, digits, text):
    assert format_interval(iv, digits) == text


def test_normal_quantile():
    assert normal_quantile(0.95) == pytest.approx(1.959964, rel=1e-6)


def test_comparison_dict_round_trips_through_strict_json():
    c = Comparison("a", "b", 0.1, 0.05, 0.15, True, "welch-t", "a beats b")
    assert json.loads(json.dumps(c.to_dict(), allow_nan=False))["verdict"] == "a beats b"


# --- evaluation noise, p-values and families (issue 31) -------------------------------------------


def test_equal_seeds_without_evaluation_se_are_never_zero_width():
    # Three equal seeds do not mean no noise: the old rule returned [1, 1] and "a beats b".
    c = compare_seeds([1, 1, 1], [0, 0, 0], "a", "b", higher_is_better=True)
    assert c.verdict == NOT_SEPARABLE and c.p == 1.0
    assert c.lo == -math.inf and c.hi == math.inf
    # One side with spread does not rescue the side whose noise was never measured.
    assert compare_seeds([1, 1, 1], [0.1, 0.0, -0.1], "a", "b", True).verdict == NOT_SEPARABLE


def test_equal_seeds_take_their_width_from_the_evaluation_se():
    # a: 20, 20, 20 (eval SE 1.5 each); b: 10, 10, 10 (eval SE 2.0): var = 1.5² + 2² = 6.25, se 2.5; seed df infinite → normal.
    c = compare_seeds([20, 20, 20], [10, 10, 10], "a", "b", True, a_eval_se=[1.5] * 3, b_eval_se=[2.0] * 3)
    assert c.hi - c.lo == pytest.approx(2 * 1.959964 * 2.5, rel=1e-5)
    assert c.p == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(4.0 / math.sqrt(2)))), rel=1e-4)  # z = 10 / 2.5
    assert c.verdict == "a beats b" and c.method == "welch-t+eval"
    # Zero evaluation SE on both sides and no seed spread: still no zero width.
    assert compare_seeds([2, 2], [1, 1], "a", "b", True, a_eval_se=[0, 0], b_eval_se=[0, 0]).p == 1.0


def test_evaluation_se_adds_to_the_seed_variance_hand_computed():
    # a: mean 2, s² 1, n 3 (eval SE 0.3, 0.4, 0.5 → ē² = 0.1667); b: mean 5, s² 4, n 3, eval SE 0 on each seed.
    c = compare_seeds([1, 2, 3], [3, 5, 7], "a", "b", True, a_eval_se=[0.3, 0.4, 0.5], b_eval_se=[0, 0, 0])
    from scipy.stats import t

    sa, sb, ea = 1 / 3, 4 / 3, (0.09 + 0.16 + 0.25) / 3
    v = sa + sb + ea
    den = sa**2 / 2 + sb**2 / 2
    sat, seed_only = (
        (v, v**2 / den),
        (sa + sb, (sa + sb) ** 2 / den),
    )  # Satterthwaite with ē² known; Welch on seeds alone
    half = max(t.ppf(0.975, df) * math.sqrt(var) for var, df in (sat, seed_only))
    assert c.hi - c.diff == pytest.approx(half, rel=1e-9)
    assert c.p == pytest.approx(max(2 * t.sf(3 / math.sqrt(var), df) for var, df in (sat, seed_only)), rel=1e-9)
    wider = compare_seeds([1, 2, 3], [3, 5, 7], "a", "b", True)
    assert c.hi - c.lo >= wider.hi - wider.lo and c.p >= wider.p  # never narrower than without the evaluation's noise


@given(
    st.lists(finite, min_size=2, max_size=6),
    st.lists(finite, min_size=2, max_size=6),
    st.floats(min_value=0, max_value=1e3),
)
@settings(max_examples=60, deadline=None)
def test_p_agrees_with_the_interval(a, b, se):
    c = compare_seeds(a, b, "a", "b", True, a_eval_se=[se] * len(a), b_eval_se=[se] * len(b))
    assert c.hi - c.lo > 0 or math.isinf(c.hi)  # never zero width
    if math.isfinite(c.lo) and (c.p < 0.049 or c.p > 0.051):
        assert (c.p < 0.05) == (c.lo > 0 or c.hi < 0)


def test_p_from_an_interval_matches_its_exclusion():
    assert p_from_interval(1.0, 0.0, 2.0) == pytest.approx(0.05, rel=1e-6)  # the end touches 0: p = 1 − level
    assert p_from_interval(1.0, 0.5, 1.5) < 0.05 < p_from_interval(1.0, -0.1, 2.1)
    assert p_from_interval(1.0, 1.0, 1.0) == 1.0  # zero width: nothing measured
    assert p_from_interval(1.0, -math.inf, math.inf) == 1.0


def test_holm_hand_computed():
    # sorted 0.01, 0.02, 0.03, 0.5 → ×4, ×3, ×2, ×1 = 0.04, 0.06, 0.06, 0.5 (running max)
    assert holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert holm([None, 0.01]) == pytest.approx([1.0, 0.02])
    assert holm([]) == []


@given(st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=20))
def test_holm_is_monotone_and_bounded(ps):
    adj = holm(ps)
    assert all(p <= q <= 1.0 for p, q in zip(ps, adj))
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    assert all(adj[i] <= adj[j] for i, j in itertools.pairwise(order))
    assert all(min(1.0, q) >= min(1.0, p * 1) and q <= min(1.0, len(ps) * p) + 1e-12 for p, q in zip(ps, adj))


def test_a_family_judges_on_adjusted_p():
    near = compare_seeds([1.0, 1.5, 0.6, 0.9], [0.0, 0.5, 0.2, -0.4], "a", "b", True)  # p ≈ 0.013
    assert near.verdict == "a beats b" and 0.001 < near.p < 0.05
    # Alone it separates; among many comparisons with p = 1, Holm multiplies its p by the family's size.
    fam = adjust_family([near] + [compare_seeds([1, 2], [1, 2], "x", "y", True)] * 60)
    assert fam[0].p_adjusted == pytest.approx(min(1.0, 61 * near.p)) and fam[0].verdict == NOT_SEPARABLE


def test_seeds_test_paired_differences():
    iv = seeds_test([0.1, 0.1, 0.1])
    assert iv.p == 1.0 and math.isinf(iv.hi)  # equal differences, no evaluation SE: unbounded
    iv = seeds_test([0.1, 0.1, 0.1], [0.02, 0.02, 0.02])
    assert iv.hi - iv.estimate == pytest.approx(1.959964 * 0.02, rel=1e-5) and iv.p < 0.05
