"""The OthelloGPT report's search, automated: the screen's verdicts, the choice, the claims it feeds, a real run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from saelab.errors import ConfigError, DataError
from saelab.experiments.reproduce.claims import DOES_NOT_HOLD, HOLDS, Claim, Evidence, evaluate_claim
from saelab.experiments.reproduce.frontier import (
    against_extreme_other,
    rank_correlation,
    spearman,
    spearman_permutation_p,
)
from saelab.experiments.reproduce.search import (
    COLLAPSED_NMSE,
    Candidate,
    choose_best,
    mean_best_auroc,
    run_search,
    select_finalists,
)
from saelab.util.intervals import NOT_SEPARABLE


def _cands(spec: dict[str, list[str]]) -> list[Candidate]:
    return [Candidate(m, {"name": n, "method": "topk", "target_l0": 8}) for m, names in spec.items() for n in names]


def _screen(points: dict[str, tuple[float, float]]) -> list[dict]:
    return [{"group": n, "l0": l0, "nmse": nmse, "folder": f"runs/seed0/{n}"} for n, (l0, nmse) in points.items()]


def test_collapsed_and_dominated_candidates_drop_out_and_the_front_is_kept():
    cands = _cands({"a": ["a1", "a2", "a3", "a4"], "b": ["b1"]})
    rows = _screen({"a1": (10, 0.30), "a2": (20, 0.20), "a3": (25, 0.25), "a4": (0.0, 1.0), "b1": (5, 0.5)})
    got = {s.candidate.name: s for s in select_finalists(cands, rows, per_method=3)}
    assert got["a1"].finalist and got["a2"].finalist and got["b1"].finalist
    assert got["a3"].status == "dominated by a2"  # a2 is sparser and more accurate
    assert got["a4"].status == "collapsed"
    with pytest.raises(DataError, match="no result for candidate"):
        select_finalists(cands, rows[:-1], 3)
    with pytest.raises(ConfigError, match="finalists"):
        select_finalists(cands, rows, 0)


def test_a_long_front_keeps_finalists_spread_from_sparsest_to_densest():
    pts = {f"a{i}": (10.0 * (i + 1), 0.5 - 0.05 * i) for i in range(7)}  # every point on the front
    got = select_finalists(_cands({"a": list(pts)}), _screen(pts), per_method=3)
    assert [s.candidate.name for s in got if s.finalist] == ["a0", "a3", "a6"]
    assert all(s.status.startswith("not kept") for s in got if not s.finalist)


@given(st.lists(st.tuples(st.floats(0.5, 100), st.floats(0.0, 1.2)), min_size=1, max_size=8), st.integers(1, 4))
def test_finalists_are_never_dominated_nor_collapsed_and_each_live_method_has_one(points, per_method):
    pts = {f"c{i}": p for i, p in enumerate(points)}
    got = select_finalists(_cands({"m": list(pts)}), _screen(pts), per_method)
    fin = [s for s in got if s.finalist]
    assert len(fin) <= per_method
    assert all(s.nmse < COLLAPSED_NMSE for s in fin)
    for s in fin:
        assert not any(
            o.l0 <= s.l0 and o.nmse <= s.nmse and (o.l0 < s.l0 or o.nmse < s.nmse)
            for o in got
            if o.status != "collapsed" and o is not s
        )
    assert bool(fin) == any(nmse < COLLAPSED_NMSE for _, nmse in points)


def test_the_best_finalist_has_the_most_good_classifiers_ties_to_the_higher_mean_auroc_then_lower_nmse():
    cands = _cands({"a": ["a1", "a2", "a3"]})
    screened = select_finalists(cands, _screen({"a1": (10, 0.3), "a2": (20, 0.2), "a3": (30, 0.1)}), 3)
    scores = {"a1": {"good_findable": 5}, "a2": {"good_findable": 9}, "a3": {"good_findable": 9}}
    assert choose_best(screened, scores)["a"].name == "a3"  # no AUROC recorded: the lower NMSE
    # A short screen leaves every count near zero: the denser setting (lower NMSE) is not chosen for it.
    scores = {
        "a1": {"good_findable": 0, "mean_best_auroc": 0.71},
        "a2": {"good_findable": 0, "mean_best_auroc": 0.66},
        "a3": {"good_findable": 0, "mean_best_auroc": 0.69},
    }
    assert choose_best(screened, scores)["a"].name == "a1"
    scores["a2"]["good_findable"] = 1  # the count still comes first
    assert choose_best(screened, scores)["a"].name == "a2"
    with pytest.raises(DataError, match="no board-state score"):
        choose_best(screened, {"a1": {"good_findable": 5}})


def test_mean_best_auroc_averages_the_findable_pairs_only():
    best = [None] * 192
    best[3 * 0 + 1], best[3 * 5 + 2], best[3 * 7 + 0] = 0.9, 0.6, 0.99  # (7, 0) is not findable
    assert mean_best_auroc({"best_auroc": best, "findable_pairs": [[0, 1], [5, 2], [9, 0]]}) == pytest.approx(0.75)
    assert mean_best_auroc({"best_auroc": best, "findable_pairs": []}) is None
    assert mean_best_auroc({"good_findable": 3}) is None  # an older score record


def _rows(values: dict[str, list[float]], key: str) -> list[dict]:
    return [
        {"name": f"{g}-s{s}", "group": g, "method": "topk", "seed": s, key: v, "ci": {}}
        for g, vs in values.items()
        for s, v in enumerate(vs)
    ]


def test_against_the_best_other_compares_with_the_strongest_rival():
    rows = _rows({"leaky": [40, 41, 42], "dimred": [30, 31, 32], "l1": [20, 21, 22]}, "good_findable")
    measure = against_extreme_other("s", "leaky", ["dimred", "l1"], "good_findable", "max")
    got = evaluate_claim(Claim("a", "b", "c", measure, ">"), Evidence({"s": rows}))
    assert got.verdict == HOLDS and got.interval.estimate == pytest.approx(10.0)  # against dimred, not l1
    rows = _rows({"leaky": [25, 26, 27], "dimred": [30, 31, 32], "l1": [20, 21, 22]}, "good_findable")
    got = evaluate_claim(Claim("a", "b", "c", measure, ">"), Evidence({"s": rows}))
    assert got.verdict == DOES_NOT_HOLD and got.interval.estimate == pytest.approx(-5.0)
    sparsest = against_extreme_other("s", "dimred", ["leaky", "l1"], "good_findable", "min")
    assert evaluate_claim(
        Claim("a", "b", "c", sparsest, "<"), Evidence({"s": rows})
    ).interval.estimate == pytest.approx(10.0)


def test_spearman_matches_hand_computed_ranks():
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    # ranks x (1, 2, 3), y (1, 3, 2): ρ = 1 − 6·Σd²/(n(n²−1)) = 1 − 6·2/24 = 0.5
    assert spearman(np.array([1, 2, 3]), np.array([1, 3, 2])) == pytest.approx(0.5)
    # ties average: y ranks (1.5, 1.5, 3) against (1, 2, 3): Pearson of the ranks
    r = np.corrcoef([1, 2, 3], [1.5, 1.5, 3])[0, 1]
    assert spearman(np.array([1, 2, 3]), np.array([5, 5, 9])) == pytest.approx(r)
    assert spearman(np.array([1, 2, 3]), np.array([7, 7, 7])) == 0.0


def test_the_ranking_claim_holds_when_our_order_follows_the_papers():
    ref = {"a": 45, "b": 30, "c": 10, "d": 1}
    agree = _rows({"a": [20, 21, 22], "b": [15, 16, 14], "c": [8, 9, 10], "d": [0, 1, 0]}, "good_findable")
    got = evaluate_claim(
        Claim("r", "p", "m", rank_correlation("s", ref, "good_findable", n_boot=300), ">"), Evidence({"s": agree})
    )
    # Exact one-sided permutation p: 1 of the 4! = 24 pairings reaches ρ = 1.
    assert got.verdict == HOLDS and got.interval.estimate == pytest.approx(1.0) and got.p == pytest.approx(1 / 24)
    reverse = _rows({"a": [0, 1, 0], "b": [8, 9, 10], "c": [15, 16, 14], "d": [20, 21, 22]}, "good_findable")
    got = evaluate_claim(
        Claim("r", "p", "m", rank_correlation("s", ref, "good_findable", n_boot=300), ">"), Evidence({"s": reverse})
    )
    # One-sided: a reversed order is no evidence of agreement, and "does not hold" is not what the test asks.
    assert got.verdict == NOT_SEPARABLE and got.interval.estimate == pytest.approx(-1.0) and got.p == pytest.approx(1.0)


def test_the_permutation_p_is_exact_against_enumeration():
    import itertools

    ref = np.array([1, 29, 38, 21, 28, 45, 34, 43], dtype=float)
    ours = np.array([3, 20, 25, 24, 30, 28, 27, 22], dtype=float)
    rho = spearman(ref, ours)
    count = sum(spearman(ref, np.array(q)) >= rho - 1e-12 for q in itertools.permutations(ours))
    assert spearman_permutation_p(ref, ours) == pytest.approx(count / 40320)
    # The figure: ρ = 0.31 over 8 methods has an exact one-sided p ≈ 0.23, far from "the ranking holds".
    assert 0.1 < spearman_permutation_p(ref, ours) < 0.3


def test_a_search_screens_scores_finalists_and_resumes(tmp_path):
    from saelab.sources.othello.harvest import HarvestConfig, harvest, write_harvest

    data = tmp_path / "data"
    write_harvest(harvest(HarvestConfig(games=40, layer=3, seed=0)), data)
    cands = [Candidate("topk", {"name": f"cand topk L0 {k}", "method": "topk", "target_l0": k}) for k in (4, 8)]
    cands.append(Candidate("none", {"name": "cand none", "method": "relu"}))
    shared = {
        "activations": str(data),
        "steps": 10,
        "batch_size": 128,
        "lr": 1e-3,
        "normalize": "scalar",
        "n_latents": 32,
        "eval_fraction": 0.1,
    }
    said: list[str] = []
    got = run_search(cands, shared, tmp_path / "search", 2, {"games": 20, "n_boot": 10}, say=said.append)
    assert set(got.chosen) == {"topk", "none"}
    record = json.loads((tmp_path / "search" / "search.json").read_text())
    assert [c["name"] for c in record["candidates"]] == [c.name for c in cands]
    scored = [c for c in record["candidates"] if c["status"] == "finalist"]
    assert scored and all("score" in c and c["score"]["findable"] >= 0 for c in scored)
    assert record["chosen"]["topk"] in {c["name"] for c in scored}
    assert "| topk | cand topk L0 4 |" in got.markdown()
    # The screen SAEs have no board score of their own (the screen is cheap); finalists do, and a rerun reuses all.
    rows = [json.loads(line) for line in (tmp_path / "search" / "screen" / "results.jsonl").read_text().splitlines()]
    assert all("good_findable" not in r for r in rows)
    said.clear()
    again = run_search(cands, shared, tmp_path / "search", 2, {"games": 20, "n_boot": 10}, say=said.append)
    assert not any(m.startswith("training") or m.startswith("harvesting") for m in said)
    assert {m: c.name for m, c in again.chosen.items()} == {m: c.name for m, c in got.chosen.items()}


def test_a_matched_setting_the_best_sweep_trains_is_not_trained_twice(tmp_path):
    from saelab.experiments.reproduce import sparsity_methods as sm
    from saelab.experiments.reproduce.budget import QUICK
    from saelab.experiments.reproduce.run import _renamed
    from saelab.experiments.reproduce.search import SearchResult

    cands = {c.name: c for c in sm.candidates(QUICK)}
    t = QUICK.target_l0
    # none, and leaky and dimred at the target L0, are settings of the matched sweep; TopK at 2× is not.
    chosen = {
        "none": cands["cand none"],
        "leaky": cands[f"cand leaky L0 {t}"],
        "dimred": cands[f"cand dimred L0 {t}"],
        "topk": cands[f"cand topk L0 {2 * t}"],
    }
    found = SearchResult(screened=[], scores={}, chosen=chosen)
    names = sm.names(QUICK)
    assert sm.reused(QUICK, found) == {
        sm.SWEEP: [
            (names["none"], sm.BEST_SWEEP, "best none"),
            (names["leaky"], sm.BEST_SWEEP, "best leaky"),
            (names["dimred"], sm.BEST_SWEEP, "best dimred"),
        ]
    }
    plans = sm.sweeps(QUICK, tmp_path, search=found)
    # The best sweep comes first and trains every chosen setting; the matched sweep trains the rest.
    assert list(plans) == [sm.BEST_SWEEP, sm.SWEEP]
    assert [t["name"] for t in plans[sm.BEST_SWEEP]["sae"]] == ["best none", "best leaky", "best dimred", "best topk"]
    assert [t["name"] for t in plans[sm.SWEEP]["sae"]] == [
        t["name"] for t in sm.matched_tables(QUICK) if t["name"] not in {names["none"], names["leaky"], names["dimred"]}
    ]
    assert {k: v for k, v in plans[sm.BEST_SWEEP].items() if k != "sae"} == {
        k: v for k, v in plans[sm.SWEEP].items() if k != "sae"
    }
    assert list(sm.sweeps(QUICK, tmp_path)) == [sm.SWEEP]  # no search: the matched sweep alone
    # A reused row keeps every number and points at the same SAE folder from the other sweep's root.
    row = {"name": "best none-s1", "group": "best none", "seed": 1, "folder": "runs/seed1/best none-s1", "nmse": 0.1}
    moved = _renamed(row, names["none"], tmp_path / "sweeps" / "best", tmp_path / "sweeps" / "methods")
    assert moved == {
        **row,
        "name": f"{names['none']}-s1",
        "group": names["none"],
        "folder": "../best/runs/seed1/best none-s1",
    }
    assert (tmp_path / "sweeps" / "methods" / moved["folder"]).resolve() == (
        tmp_path / "sweeps" / "best" / row["folder"]
    ).resolve()


@pytest.mark.slow  # the search paper end to end at a tiny size, with the full budget's extra methods: ~45 s here
def test_the_full_budgets_extra_methods_go_through_the_search_and_the_best_sweep(tmp_path):
    import dataclasses

    from saelab.experiments.reproduce import sparsity_methods as sm
    from saelab.experiments.reproduce.budget import FULL, QUICK
    from saelab.experiments.reproduce.run import run_reproduce

    assert FULL.extra_methods and not QUICK.extra_methods
    tiny = dataclasses.replace(
        QUICK,
        name="tiny-full",
        train_games=60,
        eval_games=40,
        n_latents=64,
        target_l0=8,
        steps=None,
        epochs=1.0,
        batch_size=256,
        seeds=2,
        sizes=(16, 32, 64),
        n_boot=20,
        screen_fraction=0.25,
        search_levels=(0.5, 1.0, 2.0, 3.0),
        extra_methods=True,
    )
    got = run_reproduce("sparsity-methods", tiny, out=tmp_path, say=lambda m: None)
    assert len(got) == len(sm.claims(tiny))
    search = json.loads((tmp_path / "search" / "search.json").read_text())
    assert {c["method"] for c in search["candidates"]} == set(sm.REPORT_METHODS + sm.FULL_EXTRA)
    assert set(search["chosen"]) == set(sm.REPORT_METHODS + sm.FULL_EXTRA)  # every method's best setting was chosen
    # The screen trained a quarter of the one pass the sweeps make.
    screen = json.loads((tmp_path / "search" / "screen" / "sweep.json").read_text())
    assert screen["config"]["epochs"] == 0.25
    # Each extra method's best setting trained with every seed (none of them is in the matched sweep).
    rows = [
        json.loads(line) for line in (tmp_path / "sweeps" / sm.BEST_SWEEP / "results.jsonl").read_text().splitlines()
    ]
    for role in sm.FULL_EXTRA:
        seeds = sorted(r["seed"] for r in rows if r["group"] == sm.best_name(role))
        assert seeds == [0, 1], role
        assert all(r.get("good_findable") is not None for r in rows if r["group"] == sm.best_name(role))
    md = (tmp_path / "claims.md").read_text()
    assert all(f"| {sm.best_name(role)} |" in md for role in sm.FULL_EXTRA)
