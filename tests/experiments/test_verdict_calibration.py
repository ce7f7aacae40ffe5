"""Calibration of the claim verdicts (issue 31): simulated claim families run through the real machinery.

Every family is judged by `evaluate_family` (Holm at family-wise 5%) on synthetic sweep rows. Under
the null (identical methods) a family with any "holds" / "does not hold" is a false verdict; its
rate must stay ≤ 5% with the upper end of its 95% Clopper–Pearson interval. With a real effect of
known size the power is printed (run with -s to see it) and must be more than nothing.

Noise model, sized on our OthelloGPT counts (README: 46.3 ± 7.2 of 156 over 3 seeds; the game
bootstrap's SE ≈ 1.5 pairs): a count per SAE = truth + seed noise (SD 2.5) + evaluation error
(SE 1.5), rounded to an integer. Every seed is scored on the same held-out games, so half of the
evaluation error's variance is shared by the seeds of one configuration; each row reports its
evaluation SE with ±20% bootstrap jitter.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta

from saelab.experiments.reproduce.claims import HOLDS, Claim, Evidence, evaluate_family
from saelab.experiments.reproduce.measures import difference
from saelab.util.intervals import NOT_SEPARABLE

SEEDS = 3
SEED_SD, EVAL_SE, SHARED = (
    2.5,
    1.5,
    0.5,
)  # pairs; SHARED: the evaluation variance's share common to a configuration's seeds
CLAIMS = 8  # the size of sparsity-methods' best-of-search family (its matched extension adds 6)
FAMILIES = 300


def _upper(k: int, n: int) -> float:
    """Upper end of the two-sided 95% Clopper–Pearson interval of k successes in n."""
    return 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))


def _lower(k: int, n: int) -> float:
    """Lower end of the two-sided 95% Clopper–Pearson interval."""
    return 0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1))


def _side(rng, truth: float, group: str, l0s=None, target=None) -> list[dict]:
    """One configuration's rows: SEEDS integer counts with seed noise and (partly shared) evaluation error."""
    shared = rng.normal(0.0, EVAL_SE * math.sqrt(SHARED))
    rows = []
    for s in range(SEEDS):
        own = rng.normal(0.0, EVAL_SE * math.sqrt(1.0 - SHARED))
        count = float(max(0, round(truth + rng.normal(0.0, SEED_SD) + shared + own)))
        row = {
            "name": f"{group}-s{s}",
            "group": group,
            "method": "m",
            "seed": s,
            "good_classifiers": count,
            "ci": {},
            "good_classifiers_eval_se": EVAL_SE * float(rng.uniform(0.8, 1.2)),
        }
        if l0s is not None:
            row.update(l0_eps=float(l0s[s]), target_l0=target)
        rows.append(row)
    return rows


def _family(rng, effects: list[float], l0=None) -> list:
    """One family: claim i compares configurations a_i and b_i whose true counts differ by effects[i]."""
    rows, claims = [], []
    for i, eff in enumerate(effects):
        if l0 is None:
            rows += _side(rng, 30.0 + eff, f"a{i}") + _side(rng, 30.0, f"b{i}")
        else:
            rows += l0(rng, f"a{i}", eff) + l0(rng, f"b{i}", 0.0)
        claims.append(
            Claim(
                f"a{i} beats b{i}", "paper", "count a − b", difference("s", f"a{i}", f"b{i}", "good_classifiers"), ">"
            )
        )
    return evaluate_family(claims, Evidence({"s": rows}), family="sim")


def _false_families(results) -> int:
    return sum(any(r.verdict != NOT_SEPARABLE for r in fam) for fam in results)


def test_no_false_verdicts_beyond_five_percent_when_every_null_holds():
    rng = np.random.default_rng(31)
    fams = [_family(rng, [0.0] * CLAIMS) for _ in range(FAMILIES)]
    k = _false_families(fams)
    print(
        f"\nnull families: {k}/{FAMILIES} with a false verdict = {k / FAMILIES:.3f} "
        f"[{_lower(k, FAMILIES):.3f}, {_upper(k, FAMILIES):.3f}]"
    )
    assert _upper(k, FAMILIES) <= 0.05


@pytest.mark.parametrize("effect", [5.0, 10.0, 20.0])
def test_power_against_a_real_effect_of_known_size(effect):
    rng = np.random.default_rng(int(effect))
    fams = [_family(rng, [effect] + [0.0] * (CLAIMS - 1)) for _ in range(FAMILIES // 2)]
    hits = sum(f[0].verdict == HOLDS for f in fams)
    wrong = sum(
        any(r.verdict != NOT_SEPARABLE for r in f[1:]) or f[0].verdict not in (HOLDS, NOT_SEPARABLE) for f in fams
    )
    n = len(fams)
    print(
        f"\neffect {effect:g} pairs (SD of one count ≈ {math.hypot(SEED_SD, EVAL_SE):.1f}): power {hits / n:.3f} "
        f"[{_lower(hits, n):.3f}, {_upper(hits, n):.3f}]; families with a false verdict {wrong}/{n}"
    )
    assert _upper(wrong, n) <= 0.05 + 0.03  # the nulls beside a true effect stay controlled (n is half the null test's)
    if effect >= 20.0:
        assert hits / n > 0.5  # a large effect is found


# --- the matched-L0 check --------------------------------------------------------------------------
TARGET = 32.0


def _count_at(l0: float) -> float:
    """Pairs found against L0 above ε, steep below the target as on our model (TopK at k 24 / 32 / 40: 20 / 30 / 30)."""
    return 30.0 - 10.0 * min(1.0, max(0.0, (TARGET - l0) / 8.0))


def _matched_side(center_range: tuple[float, float]):
    """A side builder: its seeds' L0 scatter (SD 4%) around a centre drawn in center_range × target."""

    def build(rng, group: str, effect: float) -> list[dict]:
        center = TARGET * rng.uniform(*center_range)
        l0s = center * (1.0 + rng.normal(0.0, 0.04, SEEDS))
        rows = _side(rng, 0.0, group, l0s, TARGET)
        for r, l0 in zip(rows, l0s):
            r["good_classifiers"] = float(max(0, round(r["good_classifiers"] + _count_at(l0) + effect)))
        return rows

    return build


def test_the_matched_l0_check_keeps_off_target_sides_from_false_verdicts():
    # Identical methods, each side's L0 centred anywhere in ±25% of the target (what the old check let through on the mean).
    rng = np.random.default_rng(4)
    fams = [_family(rng, [0.0] * 4, l0=_matched_side((0.75, 1.25))) for _ in range(FAMILIES)]
    k = _false_families(fams)
    unmatched = sum(r.interval is None and "not matched" in (r.error or "") for f in fams for r in f)
    print(
        f"\nmatched-L0 null families: {k}/{FAMILIES} false = {k / FAMILIES:.3f} [{_lower(k, FAMILIES):.3f}, "
        f"{_upper(k, FAMILIES):.3f}]; {unmatched}/{4 * FAMILIES} claims said not matched"
    )
    assert _upper(k, FAMILIES) <= 0.05
    assert unmatched > 0  # sides off target are refused, not compared


def test_power_at_matched_l0():
    rng = np.random.default_rng(5)
    fams = [_family(rng, [15.0] + [0.0] * 3, l0=_matched_side((0.97, 1.03))) for _ in range(FAMILIES // 2)]
    hits = sum(f[0].verdict == HOLDS for f in fams)
    n = len(fams)
    print(
        f"\nmatched-L0 effect 15 pairs, family of 4: power {hits / n:.3f} [{_lower(hits, n):.3f}, {_upper(hits, n):.3f}]"
    )
    assert hits / n > 0.3
