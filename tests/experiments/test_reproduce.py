"""`saelab reproduce`: claims judged from measured intervals, their tables and JSON, the command line, and runs."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from saelab.cli import main
from saelab.errors import ConfigError
from saelab.experiments.reproduce.budget import QUICK, budget
from saelab.experiments.reproduce.claims import (
    DOES_NOT_HOLD,
    HOLDS,
    JSON_KEYS,
    Claim,
    Evidence,
    claims_markdown,
    evaluate_claim,
    verdict,
)
from saelab.experiments.reproduce.clock import TIME_FILE, WallClock, describe, read_segments
from saelab.experiments.reproduce.frontier import frontier_difference
from saelab.experiments.reproduce.measures import difference, exponent, gap_change, metric
from saelab.experiments.reproduce.run import PAPERS, adjusted_budget, folder_suffix, rerun_command, run_reproduce
from saelab.util.intervals import NOT_SEPARABLE, Interval

KEYS = {"claim", "paper", "ours", "ci", "verdict", "p", "p_adjusted", "measure", "paper_measure", "family"}


def _rows(values: dict[str, list[float]], key: str = "nmse", **extra) -> list[dict]:
    """Synthetic sweep rows: one row per (group, seed) holding `key`."""
    return [
        {"name": f"{g}-s{s}", "group": g, "method": "topk", "seed": s, key: v, "ci": {}, **extra}
        for g, vs in values.items()
        for s, v in enumerate(vs)
    ]


def _claim(measure, holds_if="<") -> Claim:
    return Claim("a beats b", "paper: 1 vs 2", "metric a − b", measure, holds_if)


def test_verdict_follows_where_the_interval_lies():
    above = Interval(0.5, 0.2, 0.8, 3, "seeds-t")
    across = Interval(0.1, -0.2, 0.4, 3, "seeds-t")
    assert verdict(above, ">") == HOLDS
    assert verdict(above, "<") == DOES_NOT_HOLD
    assert verdict(across, ">") == verdict(across, "<") == NOT_SEPARABLE
    assert verdict(Interval(0.5, 0.2, 0.8, 3, "t"), ">", null=0.3) == NOT_SEPARABLE  # the null is a value, not always 0
    assert verdict(Interval(0.5, 0.5, 0.5, 1, "single"), ">") == NOT_SEPARABLE  # one seed has no spread
    assert verdict(Interval(0.5, -math.inf, math.inf, 1, "welch-t"), ">") == NOT_SEPARABLE
    with pytest.raises(ConfigError):
        verdict(above, ">=")


def test_a_clear_difference_over_seeds_holds_and_the_reverse_does_not():
    rows = _rows({"a": [0.10, 0.11, 0.12], "b": [0.20, 0.21, 0.22]})
    ev = Evidence({"s": rows})
    got = evaluate_claim(_claim(difference("s", "a", "b", "nmse"), "<"), ev)
    assert got.verdict == HOLDS
    assert got.interval.estimate == pytest.approx(-0.10)
    assert got.interval.hi < 0 and got.interval.method == "welch-t"
    assert evaluate_claim(_claim(difference("s", "a", "b", "nmse"), ">"), ev).verdict == DOES_NOT_HOLD


def test_overlapping_seeds_are_not_separable():
    rows = _rows({"a": [0.10, 0.30, 0.20], "b": [0.15, 0.25, 0.22]})
    got = evaluate_claim(_claim(difference("s", "a", "b", "nmse")), Evidence({"s": rows}))
    assert got.verdict == NOT_SEPARABLE
    assert got.interval.lo < 0 < got.interval.hi


def test_one_seed_without_a_bootstrap_interval_is_never_separable():
    rows = _rows({"a": [0.1], "b": [0.9]})
    got = evaluate_claim(_claim(difference("s", "a", "b", "nmse")), Evidence({"s": rows}))
    assert got.verdict == NOT_SEPARABLE and not math.isfinite(got.interval.lo)


def test_a_missing_configuration_is_reported_not_raised():
    rows = _rows({"a": [0.1, 0.2]})
    got = evaluate_claim(_claim(difference("s", "a", "nope", "nmse")), Evidence({"s": rows}))
    assert got.verdict == NOT_SEPARABLE and got.interval is None and "nope" in got.error
    assert got.to_json() == {
        "claim": "a beats b",
        "paper": "paper: 1 vs 2",
        "ours": None,
        "ci": None,
        "verdict": NOT_SEPARABLE,
        "p": None,
        "p_adjusted": None,
        "measure": "metric a − b",
        "paper_measure": "paper: 1 vs 2",
        "family": "",
    }
    missing_sweep = evaluate_claim(_claim(metric("other", "a", "nmse")), Evidence({"s": rows}))
    assert "other" in missing_sweep.error


def test_json_has_exactly_its_keys_and_the_table_its_five_columns():
    rows = _rows({"a": [0.10, 0.11, 0.12], "b": [0.20, 0.21, 0.22]})
    res = [evaluate_claim(_claim(difference("s", "a", "b", "nmse")), Evidence({"s": rows}))]
    j = res[0].to_json()
    assert set(j) == KEYS == set(JSON_KEYS)
    assert j["ci"][0] < j["ours"] < j["ci"][1] < 0 and j["verdict"] == HOLDS
    json.dumps(j, allow_nan=False)
    md = claims_markdown(res)
    assert md.splitlines()[0] == "| claim | paper's figure | ours (mean ± 95% CI) | p (Holm-adjusted) | verdict |"
    assert 0 < j["p"] <= j["p_adjusted"] < 0.05
    assert "“a beats b”" in md and "**holds**" in md and "-0.100 ±" in md


def test_a_power_law_exponent_is_fitted_with_an_interval():
    rng = np.random.default_rng(0)
    rows = []
    for n in (64, 128, 256, 512):
        for s in range(3):
            rows.append(
                {
                    "name": f"t{n}-s{s}",
                    "group": f"t{n}",
                    "method": "topk",
                    "seed": s,
                    "n_latents": n,
                    "nmse": 2.0 * n**-0.4 * math.exp(rng.normal(0, 0.02)),
                    "ci": {},
                }
            )
    got = evaluate_claim(
        _claim(exponent("s", [f"t{n}" for n in (64, 128, 256, 512)], n_boot=200), "<"), Evidence({"s": rows})
    )
    assert got.verdict == HOLDS
    assert got.interval.lo < -0.4 < got.interval.hi
    too_few = evaluate_claim(_claim(exponent("s", ["t64", "t128"], n_boot=50)), Evidence({"s": rows}))
    assert too_few.interval is None and "≥ 3 distinct" in too_few.error


def test_a_gap_that_widens_with_scale_holds():
    rows = _rows(
        {"t1": [0.30, 0.31, 0.29], "r1": [0.32, 0.33, 0.31], "t2": [0.10, 0.11, 0.09], "r2": [0.30, 0.31, 0.29]}
    )
    got = evaluate_claim(_claim(gap_change("s", (("t1", "r1"), ("t2", "r2")), "nmse"), "<"), Evidence({"s": rows}))
    assert got.interval.estimate == pytest.approx(-0.18)
    assert got.verdict == HOLDS


def test_every_paper_plans_valid_sweeps_and_claims_at_both_budgets(tmp_path):
    from saelab.experiments.grid import plan_sweep

    for b in (budget("quick"), budget("full")):
        for mod in PAPERS.values():
            sweeps = mod.sweeps(b, tmp_path, tmp_path / "lm")
            for cfg in sweeps.values():
                groups = {s.group for s in plan_sweep({**cfg, "out": str(tmp_path)}).saes}
                assert len(groups) == len(cfg["sae"])
            claims = mod.claims(b, lm=True)
            assert claims and all(c.claim and c.paper and c.holds_if in "<>" for c in claims)
    with pytest.raises(ConfigError):
        budget("huge")


def test_cli_rejects_bad_arguments(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "not-a-paper"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "batchtopk", "--budget", "huge"])
    assert e.value.code == 2 and "--budget" in capsys.readouterr().err
    # A model to harvest needs its text; the check runs before any harvesting, so nothing is written.
    out = tmp_path / "r"
    assert (
        main(["reproduce", "l1-sqrt", "--model", "gpt2", "--text", str(tmp_path / "missing.txt"), "--out", str(out)])
        == 2
    )
    assert "text=" in capsys.readouterr().err and not out.exists()
    assert main(["reproduce", "scaling", "--model", "gpt2", "--out", str(out)]) == 2
    assert "no language-model claim" in capsys.readouterr().err and not out.exists()
    assert main(["reproduce", "scaling", "--layer", "9", "--out", str(out)]) == 2  # the committed model has 4 blocks
    assert "layer=9" in capsys.readouterr().err and not out.exists()
    assert main(["reproduce", "scaling", "--epochs", "0", "--out", str(out)]) == 2
    assert "epochs=0" in capsys.readouterr().err and not out.exists()


def test_epochs_sets_every_papers_training_length_and_its_own_folder():
    sm, full, quick = PAPERS["sparsity-methods"], budget("full"), budget("quick")
    b, changed = adjusted_budget(sm, full)  # full makes one pass over the report's games, with 512 latents here
    assert (b.epochs, b.steps, b.n_latents, changed) == (1.0, None, 512, {})
    assert all(adjusted_budget(m, full)[0].epochs == 1.0 for m in PAPERS.values())
    assert adjusted_budget(PAPERS["batchtopk"], full)[0].n_latents == full.n_latents == 1024
    assert b.screen_training()["epochs"] == 0.25 and b.training()["epochs"] == 1.0
    b, changed = adjusted_budget(sm, full, epochs=4)  # the report's four passes: another folder
    assert (b.epochs, changed, b.train_games, folder_suffix(changed)) == (4.0, {"epochs": 4.0}, 100_000, "-e4")
    assert b.screen_training()["epochs"] == 1.0 and b.training()["epochs"] == 4.0
    assert (
        rerun_command("sparsity-methods", b, changed, None)
        == "saelab reproduce sparsity-methods --budget full --epochs 4"
    )
    assert adjusted_budget(sm, full, epochs=1.0)[1] == {}  # the default length named explicitly is the same result
    b, changed = adjusted_budget(
        PAPERS["scaling"], quick, layer=2, epochs=2
    )  # quick counts steps; --epochs replaces them
    assert (b.steps, b.epochs, b.layer, folder_suffix(changed)) == (None, 2.0, 2, "-layer2-e2")
    assert "steps" not in b.training() and b.training()["epochs"] == 2.0
    assert (
        rerun_command("scaling", b, changed, "m")
        == "saelab reproduce scaling --budget quick --layer 2 --epochs 2 --model m"
    )
    assert adjusted_budget(PAPERS["scaling"], quick) == (quick, {})
    for bad in (0, -1.0, math.nan, math.inf, True):
        with pytest.raises(ConfigError, match="epochs"):
            adjusted_budget(sm, full, epochs=bad)


MICRO = dataclasses.replace(
    QUICK,
    name="micro",
    train_games=60,
    eval_games=40,
    n_latents=64,
    target_l0=8,
    steps=20,
    batch_size=256,
    seeds=2,
    sizes=(16, 32, 64),
    n_boot=20,
)


def test_a_tiny_reproduction_writes_claims_and_a_rerun_resumes_without_training(tmp_path):
    out = tmp_path / "l1"
    first = run_reproduce("l1-sqrt", MICRO, out=out, say=lambda m: None)
    record = json.loads((out / "claims.json").read_text())
    assert record["budget"] == "micro" and len(record["claims"]) == len(first) == 4
    assert record["command"] == "saelab reproduce l1-sqrt --budget micro"  # the command that reruns it
    for c, r in zip(record["claims"], first):
        assert KEYS <= set(c) and c["verdict"] == r.verdict
        if r.interval is None:  # e.g. a penalty that missed its target L0 in 20 steps: said, not judged
            assert r.verdict == NOT_SEPARABLE and r.error and c["ours"] is None
        else:
            # each verdict from its own family-wise adjusted p-value
            assert (r.verdict != NOT_SEPARABLE) == (c["p_adjusted"] < 0.05) and c["family"] == "l1-sqrt"
    md = (out / "claims.md").read_text()
    assert "| claim | paper's figure |" in md and "## Sweep `penalties`" in md
    assert (
        "The OthelloGPT sweeps trained on 60 games (after block 3), 20 steps, batches of 256, Adam at lr 0.001, 2 seeds per setting."
        in md
    )
    weights = sorted(out.rglob("sae_weights.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in weights]
    said = []
    again = run_reproduce("l1-sqrt", MICRO, out=out, say=said.append)
    assert [p.stat().st_mtime_ns for p in weights] == stamps  # nothing retrained
    assert not any(m.startswith("training") for m in said) and any("reusing" in m for m in said)
    assert [r.to_json() for r in again] == [r.to_json() for r in first]
    # The time is that of every run that built the result: the rerun is a second segment.
    runs = json.loads((out / "claims.json").read_text())["runs"]
    assert len(runs) == 2 and runs[0]["started"] == record["runs"][0]["started"]
    assert runs[0]["seconds"] == pytest.approx(record["runs"][0]["seconds"], abs=1.0)  # + writing the claims
    assert json.loads((out / "claims.json").read_text())["seconds"] == pytest.approx(
        sum(r["seconds"] for r in runs), abs=0.11
    )
    assert "over 2 runs (resumed once)" in (out / "claims.md").read_text()


def test_a_run_stopped_between_sweeps_leaves_the_claims_of_the_finished_ones(tmp_path, monkeypatch):
    from saelab.experiments.reproduce import l1_sqrt
    from saelab.experiments.reproduce import run as run_module

    plain = l1_sqrt.sweeps
    monkeypatch.setattr(
        l1_sqrt, "sweeps", lambda b, data, lm=None: {**plain(b, data), "later": plain(b, data)[l1_sqrt.SWEEP]}
    )
    real_sweep = run_module.run_sweep

    def killed_at_the_second(cfg, out, **kw):
        if Path(out).name == "later":
            raise KeyboardInterrupt  # the run is stopped before its last sweep
        return real_sweep(cfg, out, **kw)

    monkeypatch.setattr(run_module, "run_sweep", killed_at_the_second)
    out = tmp_path / "l1"
    with pytest.raises(KeyboardInterrupt):
        run_reproduce("l1-sqrt", MICRO, out=out, say=lambda m: None)
    record = json.loads((out / "claims.json").read_text())
    assert record["pending"] == ["later"] and len(record["claims"]) == 4
    # Judged on the finished sweep (at 20 steps a claim may still be unjudged for a missed target, never for missing rows).
    assert not any("no results for sweep" in json.dumps(c) for c in record["claims"])
    assert "**Partial:** sweep `later` not run yet" in (out / "claims.md").read_text()
    monkeypatch.setattr(run_module, "run_sweep", real_sweep)
    run_reproduce("l1-sqrt", MICRO, out=out, say=lambda m: None)  # resumed to its end
    done = json.loads((out / "claims.json").read_text())
    assert done["pending"] == [] and "Partial" not in (out / "claims.md").read_text()
    assert [c["ours"] for c in done["claims"]] == [
        c["ours"] for c in record["claims"]
    ]  # the finished sweep was not retrained
    assert [c["verdict"] for c in done["claims"]] == [c["verdict"] for c in record["claims"]]


def test_the_wall_clock_keeps_a_killed_runs_time(tmp_path):
    (tmp_path / TIME_FILE).write_text(
        json.dumps({"segments": [{"started": "2026-12-01T21:28:39+00:00", "seconds": 900.0}]})
    )
    with WallClock(tmp_path, tick=0.02):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the file is kept current while the run goes on
            now = read_segments(tmp_path / TIME_FILE)
            if len(now) == 2 and now[1]["seconds"] > 0:
                break
            time.sleep(0.02)
        assert len(now) == 2 and now[0]["seconds"] == 900.0 and now[1]["seconds"] > 0
    assert describe(read_segments(tmp_path / TIME_FILE)).endswith("over 2 runs (resumed once)")
    assert describe([{"started": "x", "seconds": 12.4}]) == "12 s"
    (tmp_path / TIME_FILE).write_text("{not json")
    assert read_segments(tmp_path / TIME_FILE) == []  # an unreadable record: this run's time alone


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PAPERS))
def test_quick_reproduction_runs_end_to_end(name, tmp_path, capsys):
    assert main(["reproduce", name, "--budget", "quick", "--out", str(tmp_path / name), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed and all(set(c) == KEYS for c in printed)
    assert all(c["verdict"] in (HOLDS, DOES_NOT_HOLD, NOT_SEPARABLE) for c in printed)
    record = json.loads((tmp_path / name / "claims.json").read_text())["claims"]
    for c, r in zip(printed, record):
        if c["ours"] is None:  # not measured (e.g. a side missed its target L0): said why, never judged
            assert c["verdict"] == NOT_SEPARABLE and r["error"]
        else:
            assert c["ci"][0] <= c["ours"] <= c["ci"][1] or None in c["ci"]
    assert any(c["ours"] is not None for c in printed)
    assert (
        "| claim | paper's figure | ours (mean ± 95% CI) | p (Holm-adjusted) | verdict |"
        in (tmp_path / name / "claims.md").read_text()
    )


def test_a_side_that_missed_its_target_l0_is_not_a_matched_comparison():
    rows = _rows({"a": [0.10, 0.11, 0.12]}, target_l0=32, coefficient={"target": 32}, l0_eps=31.0)
    rows += _rows({"b": [0.20, 0.21, 0.22]}, target_l0=32, coefficient={"target": 32}, l0_eps=0.6)
    got = evaluate_claim(_claim(difference("s", "a", "b", "nmse")), Evidence({"s": rows}))
    assert got.verdict == NOT_SEPARABLE and "'b' reached L0 above ε 0.6, 0.6, 0.6" in got.error
    for r in rows:
        r["l0_eps"] = 30.0
    assert evaluate_claim(_claim(difference("s", "a", "b", "nmse")), Evidence({"s": rows})).verdict == HOLDS
    # Every seed, not the mean: seeds at 12 / 52 / 32 average 32 but are not "at 32" (issue 31 item 4).
    for r, l0 in zip([r for r in rows if r["group"] == "b"], (12.0, 52.0, 32.0)):
        r["l0_eps"] = l0
    got = evaluate_claim(_claim(difference("s", "a", "b", "nmse")), Evidence({"s": rows}))
    assert got.verdict == NOT_SEPARABLE and "not matched" in got.error
    # A side without an adapted coefficient (TopK's k) is checked too: leaky TopK at k 32 with 279 above ε.
    rows = _rows({"a": [0.10, 0.11, 0.12]}, target_l0=32, l0_eps=31.0) + _rows(
        {"b": [0.20, 0.21, 0.22]}, target_l0=32, l0_eps=279.0
    )
    assert (
        "'b' reached L0 above ε 279"
        in evaluate_claim(_claim(difference("s", "a", "b", "nmse")), Evidence({"s": rows})).error
    )


def _grid_rows(name: str, alphas, l0s, nmses_by_seed) -> list[dict]:
    return [
        {
            "name": f"{name} alpha{a}-s{s}",
            "group": f"{name} alpha{a}",
            "method": "relu",
            "seed": s,
            "l0_eps": l0,
            "nmse": v,
            "ci": {},
        }
        for s, nmses in enumerate(nmses_by_seed)
        for a, l0, v in zip(alphas, l0s, nmses)
    ]


def test_frontiers_are_compared_at_the_target_l0_by_interpolation():
    # a: NMSE 0.2 at L0 32 on every seed (between 0.1 at 64 and 0.4 at 16); b: 0.4 at 32 (0.2 at 64, 0.8 at 16).
    a = _grid_rows("a", (1, 2, 3), (64, 32, 16), [(0.1, 0.2, 0.4), (0.11, 0.21, 0.41), (0.09, 0.19, 0.39)])
    b = _grid_rows("b", (1, 3), (64, 16), [(0.2, 0.8), (0.21, 0.81), (0.19, 0.79)])
    ev = Evidence({"s": a + b})
    names_a, names_b = ["a alpha1", "a alpha2", "a alpha3"], ["b alpha1", "b alpha3"]
    got = evaluate_claim(_claim(frontier_difference("s", names_a, names_b, "nmse", 32), "<"), ev)
    assert got.verdict == HOLDS and got.interval.n == 3
    assert got.interval.estimate == pytest.approx(0.2 - 0.4, abs=0.01)  # b interpolated log-log: sqrt(0.2 · 0.8) = 0.4
    beyond = evaluate_claim(_claim(frontier_difference("s", names_a, names_b, "nmse", 200)), ev)
    assert beyond.interval is None and "does not bracket" in beyond.error


def test_equal_k_with_unequal_measured_l0_is_not_matched():
    rows = _rows({"batchtopk": [0.30, 0.31, 0.32]}, l0_eps=23.0) + _rows({"topk": [0.20, 0.21, 0.22]}, l0_eps=32.0)
    got = evaluate_claim(
        _claim(difference("s", "batchtopk", "topk", "nmse", match_l0=True, target=32)), Evidence({"s": rows})
    )
    assert got.verdict == NOT_SEPARABLE and "'batchtopk' reached L0 above ε 23" in got.error
    near = _rows({"batchtopk": [0.30, 0.31, 0.32]}, l0_eps=30.0) + _rows({"topk": [0.20, 0.21, 0.22]}, l0_eps=32.0)
    got = evaluate_claim(
        _claim(difference("s", "batchtopk", "topk", "nmse", match_l0=True, target=32)), Evidence({"s": near})
    )
    assert got.verdict == DOES_NOT_HOLD


def test_matched_difference_reads_a_matched_member_else_the_frontier_else_says_not_matched():
    from saelab.experiments.reproduce.measures import matched_difference

    # a: a grid at L0 above ε 64 / 16 (no member within ±10% of 32): its frontier at 32 is sqrt(0.1 · 0.4) = 0.2 per seed.
    a = _grid_rows("a", (1, 3), (64, 16), [(0.1, 0.4), (0.11, 0.41), (0.09, 0.39)])
    # b: one member at 31 on every seed (matched, read directly), one far off.
    b = _grid_rows("b", (1, 2), (31, 90), [(0.5, 0.1), (0.52, 0.1), (0.48, 0.1)])
    ev = Evidence({"s": a + b})
    got = evaluate_claim(
        _claim(matched_difference("s", ["a alpha1", "a alpha3"], ["b alpha1", "b alpha2"], "nmse", 32), "<"), ev
    )
    assert got.interval.estimate == pytest.approx(0.2 - 0.5, abs=0.01) and got.verdict == HOLDS
    assert "frontier vs b alpha1 (matched)" in got.interval.method
    alone = evaluate_claim(_claim(matched_difference("s", ["a alpha1"], ["b alpha1"], "nmse", 32)), ev)
    assert alone.interval is None and "not matched" in alone.error
