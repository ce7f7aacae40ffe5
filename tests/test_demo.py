"""The README's main job, in its --quick form: every output a person looks at is there and consistent."""

import json

import pytest

from saelab.cli import main


@pytest.mark.demo  # ≈ 3 minutes: its own target (make test-demo), which CI runs after the default suite
def test_quick_othello_demo_writes_results_table_and_plots(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in rows} == {"relu", "topk", "batchtopk", "leaky_topk"}
    for r in rows:
        assert {
            "method",
            "params",
            "good_classifiers",
            "good_classifier_latents",
            "findable",
            "coverage",
            "l0",
            "nmse",
        } <= set(r)
        assert 0 <= r["good_classifiers"] <= 192 and 0 < r["findable"] <= 192
        assert 0.0 <= r["coverage"] <= 1.0 and 0.0 < r["nmse"] < 1.5
    topk = next(r for r in rows if r["method"] == "topk")
    assert topk["l0"] <= topk["params"]["k"]
    table = (out / "results.md").read_text()
    assert "good classifiers / findable" in table and "coverage" in table
    assert " beats " not in table and "not separable" in table  # one seed: no method comparison is called (issue 31)
    for png in ("frontier.png", "boards.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "results in" in capsys.readouterr().out


def _demo_rows(seeds: int) -> list[dict]:
    """Two methods at one target L0; TopK's NMSE far below ReLU's, each row with a tight row-block bootstrap."""
    rows = []
    for method, nmse in (("topk", 0.10), ("relu", 0.30)):
        for s in range(seeds):
            v = nmse + 0.001 * s
            rows.append(
                {
                    "name": f"{method}-s{s}",
                    "group": method,
                    "method": method,
                    "seed": s,
                    "target_l0": 32,
                    "l0": 32.0,
                    "nmse": v,
                    "nmse_eval_se": 0.002,
                    "ci": {
                        "nmse": {
                            "estimate": v,
                            "lo": v - 0.004,
                            "hi": v + 0.004,
                            "n": 100,
                            "method": "bootstrap-blocks",
                        }
                    },
                }
            )
    return rows


def test_one_seed_never_calls_a_method_comparison():
    # Issue 31 item 9: a one-seed interval (evaluation noise only) flipped "beats" between CPUs.
    from saelab.demo import demo_markdown

    one = demo_markdown(_demo_rows(1))
    assert "beats" not in one and "not separable" in one and "--seeds 3" in one
    three = demo_markdown(_demo_rows(3))
    assert "topk beats relu" in three and "Holm" in three
