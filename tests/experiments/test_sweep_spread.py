"""Sweeps spread over ranks: 2 gloo ranks under torchrun each train a share of the SAEs, and every SAE
ends with the weights the one-process sweep gives it (each is trained alone on the batches its seed
draws, initialized by its name; nothing is exchanged between ranks, so nothing is rounded differently).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from cli_harness import run_torchrun
from safetensors.torch import load_file

from saelab.errors import ConfigError
from saelab.experiments.grid import (
    AUXK_STEP_SHARE,
    RELU_STEP_SHARE,
    SPARSE_STEP_SHARE,
    memory_estimate,
    plan_sweep,
    spread_over_ranks,
    step_cost_estimate,
)
from saelab.experiments.sweep import run_sweep
from saelab.experiments.sweep_state import DEAL, PLAN, RANK_RESULTS, RESULTS, _settle_deal

# 2 seeds × 3 SAEs of two sizes: each seed's SAEs are dealt to the two ranks.
CONFIG = """
activations = "{data}"
steps = 40
batch_size = 64
seed = [0, 1]
[[sae]]
method = "topk"
k = [2, 4]
n_latents = 32
[[sae]]
method = "topk"
k = 3
n_latents = 96
"""


def _config(tmp_path: Path, toy_dir: Path) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(CONFIG.format(data=toy_dir / "activations.npy"))
    return path


def _torchrun_sweep(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        "-m",
        "saelab",
        "sweep",
        str(config),
        "--out",
        str(out),
        "--spread-over-ranks",
        "--no-progress",
        *extra,
    ]
    done = run_torchrun(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]


def _weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {r["name"]: load_file(out / r["folder"] / "sae_weights.safetensors") for r in _rows(out)}


def test_deal_balances_memory_and_keeps_plan_order(toy_dir):
    plan = plan_sweep(
        {
            "activations": str(toy_dir / "activations.npy"),
            "out": "-",
            "sae": [{"method": "topk", "k": 2, "n_latents": [512, 64, 80, 96, 112, 256]}],
        }
    )
    shares = spread_over_ranks(plan.saes, 16, 32, 2)
    assert sorted(s.name for share in shares for s in share) == sorted(s.name for s in plan.saes)
    # Largest first to the lighter rank: 512 | 256, 112, 96, 80 | then 64 to the 512; each share in plan order.
    assert [[s.cfg.n_latents for s in share] for share in shares] == [[512, 64], [80, 96, 112, 256]]
    assert spread_over_ranks(plan.saes[:1], 16, 32, 3)[1:] == [[], []]  # more ranks than SAEs: some idle
    with pytest.raises(ConfigError, match="ranks"):
        spread_over_ranks(plan.saes, 16, 32, 0)


def test_deal_weighs_a_dense_step_above_a_sparse_one(toy_dir):
    # A ReLU+L1 SAE trains on the dense path until its code is sparse, a TopK one (with or without AuxK)
    # on the sparse kernels: at equal size ReLU costs about 1.7 TopK steps, AuxK a quarter of a TopK step more.
    plan = plan_sweep(
        {
            "activations": str(toy_dir / "activations.npy"),
            "out": "-",
            "sae": [
                {"method": "relu", "penalty": "l1", "alpha": 1.0, "n_latents": 4096},
                {"method": "topk", "k": 8, "n_latents": [256, 512, 1024, 2048, 4096], "auxk": True},
            ],
        }
    )
    relu, *topk = [step_cost_estimate(s.cfg, 128, 2048) for s in plan.saes]
    assert relu == pytest.approx(topk[-1] * RELU_STEP_SHARE / (SPARSE_STEP_SHARE * (1 + AUXK_STEP_SHARE)))
    assert topk == pytest.approx([topk[0] * m for m in (1, 2, 4, 8, 16)])
    shares = spread_over_ranks(plan.saes, 128, 2048, 2)
    # By time (per 4,096 latents: ReLU 0.5, TopK+AuxK 0.375), largest first to the lighter rank:
    # ReLU | TopK 4,096, 2,048 | TopK 1,024 to the ReLU | 512 | 256: 0.62 against 0.61.
    assert [[s.cfg.n_latents for s in share] for share in shares] == [[4096, 256, 1024], [512, 2048, 4096]]
    assert [s.cfg.method for s in shares[0]] == ["relu", "topk", "topk"]
    by_memory = spread_over_ranks(plan.saes, 128, 2048, 2, memory_estimate)
    assert [len(share) for share in by_memory] == [2, 4]


def test_the_recorded_deal_outlives_a_changed_cost_model(toy_dir, tmp_path):
    plan = plan_sweep(
        {
            "activations": str(toy_dir / "activations.npy"),
            "out": "-",
            "seed": [0, 1],
            "sae": [{"method": "topk", "k": 2, "n_latents": [512, 64, 80, 96, 112, 256]}],
        }
    )
    (tmp_path / PLAN).write_text(json.dumps({"saes": [s.name for s in plan.saes]}))
    deal = _settle_deal(tmp_path, plan, None, 16, 32, 2)  # a new sweep: dealt by step time, recorded
    assert json.loads((tmp_path / PLAN).read_text())[DEAL] == deal
    assert sorted(n for names in deal["0"] for n in names) == sorted(s.name for s in plan.saes if s.seed == 0)
    # A resume takes the recorded deal whatever the estimate says now (here: another deal entirely).
    mine = {
        "0": [[s.name for s in plan.saes if s.seed == 0][:1], [s.name for s in plan.saes if s.seed == 0][1:]],
        "1": [[], [s.name for s in plan.saes if s.seed == 1]],
    }
    assert _settle_deal(tmp_path, plan, {DEAL: mine}, 16, 32, 2) == mine
    # A spread sweep saved before deals were recorded was dealt by memory; its resume deals the same way.
    legacy = _settle_deal(tmp_path, plan, {"saes": []}, 16, 32, 2)
    assert legacy["0"] == [
        [s.name for s in share] for share in spread_over_ranks(plan.by_seed()[0], 16, 32, 2, memory_estimate)
    ]


@pytest.mark.slow  # two torchrun launches (a spread sweep and its resume) and a one-process sweep: ~60 s here
def test_two_ranks_spread_a_sweep_to_the_one_process_weights(toy_dir, tmp_path):
    config = _config(tmp_path, toy_dir)
    done = _torchrun_sweep(config, tmp_path / "two")
    torch.set_num_threads(1)
    run_sweep(config, tmp_path / "one", progress=False, say=lambda m: None, report=False)
    two, one = _rows(tmp_path / "two"), _rows(tmp_path / "one")
    # Every SAE trained exactly once, each rank trained some, and rank 0 wrote the rows in the one-process order.
    assert [r["name"] for r in two] == [r["name"] for r in one]
    assert len({r["folder"] for r in two}) == 6
    assert len(list((tmp_path / "two" / "runs").rglob("sae_weights.safetensors"))) == 6
    assert sorted(p.name for p in (tmp_path / "two" / "runs").iterdir()) == [
        "seed0-rank0",
        "seed0-rank1",
        "seed1-rank0",
        "seed1-rank1",
    ]
    assert (tmp_path / "two" / "report" / "report.html").exists()
    assert done.stdout.count("SAEs →") == 1
    wt, wo = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    for name in wo:
        assert wt[name].keys() == wo[name].keys()
        for key in wo[name]:
            torch.testing.assert_close(wt[name][key], wo[name][key], rtol=0, atol=1e-6, msg=f"{name} {key}")
    for a, b in zip(two, one):
        assert a["nmse"] == pytest.approx(b["nmse"], rel=1e-5)

    # Resume: killed before rank 1's last part finished and before the rows were merged; rank 0 had
    # evaluated its SAEs (its rows file, marked here so a reuse shows).
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two", resumed)
    (resumed / RESULTS).unlink()
    shutil.rmtree(resumed / "report")
    rank0 = [{**r, "marker": 1} for r in two if "-rank0" in r["folder"]]
    (resumed / RANK_RESULTS.format(rank=0)).write_text("".join(json.dumps(r) + "\n" for r in rank0))
    part = resumed / "runs" / "seed1-rank1"
    for eval_json in part.rglob("eval.json"):
        eval_json.unlink()
    _torchrun_sweep(config, resumed, "--resume", "--no-report")
    merged = _rows(resumed)
    assert [r["name"] for r in merged] == [r["name"] for r in two]
    assert sorted(r["name"] for r in merged if r.get("marker")) == sorted(
        r["name"] for r in rank0
    )  # kept, not re-evaluated
    assert not list(resumed.glob("results.rank*.jsonl"))  # merged into results.jsonl
    for name, tensors in _weights(resumed).items():
        for key, t in tensors.items():
            torch.testing.assert_close(t, wt[name][key], rtol=0, atol=0)
    # A spread sweep resumes only as it started (which rank trains what depends on the number of ranks).
    with pytest.raises(ConfigError, match="spread_over_ranks"):
        run_sweep(config, resumed, resume=True, progress=False, say=lambda m: None, report=False)
