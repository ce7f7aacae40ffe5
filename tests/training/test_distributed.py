"""Data-parallel training: 2 gloo processes under torchrun reproduce the one-process run of the same global batch.

Tolerance: the ranks' gradients are means over 128-row slices, averaged by an all-reduce, where one
process takes the mean over 256 rows at once, so float32 sums are rounded in another order (~1e-7
relative per step). Adam's updates are bounded by lr, so after 200 steps such rounding moves the
weights by a few 1e-7 of their largest entry (measured: ≤ 7e-7); 1e-5 leaves room for other BLAS
blockings while a wrong reduction (a slice's gradient instead of the global one, a per-rank
dead-latent count or BatchTopK threshold) moves them by 1e-3 or more within a few steps.
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
from saelab.methods.mapping import load_toml
from saelab.training.trainer import Trainer
from saelab.util.distributed import World

TOLERANCE = 1e-5
# One run config, three SAEs on the same batches: the sparse TopK kernels with AuxK, the dense
# path with a penalty, and BatchTopK (global threshold) with AuxK (global batch variances).
CONFIG = """
activations = "{data}"
steps = {steps}
batch_size = 256
n_latents = 64
log_every = 50
[[sae]]
method = "topk"
k = 4
auxk = true
k_aux = 16
dead_tokens = 512
[[sae]]
method = "relu"
penalty = "l1"
alpha = 0.01
kernel = "dense"
[[sae]]
method = "batchtopk"
k = 4
auxk = true
k_aux = 16
dead_tokens = 512
"""
NAMES = ("topk-k4", "relu-l1-a0.01", "batchtopk-k4")


def _config(tmp_path: Path, toy_dir: Path, steps: int) -> Path:
    path = tmp_path / f"run{steps}.toml"
    path.write_text(CONFIG.format(data=toy_dir / "activations.npy", steps=steps))
    return path


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}

    done = run_torchrun(["-m", "saelab", *args], nproc, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _train_here(config: Path, out: Path, resume: bool = False) -> None:
    Trainer(load_toml(config, out=str(out)), progress=False).fit(resume=resume)


def _max_rel_diff(a: Path, b: Path) -> dict[str, float]:
    """Per SAE: max over weight tensors of max|a − b| / max|b|."""
    diffs = {}
    for name in NAMES:
        wa, wb = load_file(a / name / "sae_weights.safetensors"), load_file(b / name / "sae_weights.safetensors")
        assert wa.keys() == wb.keys()
        diffs[name] = max(float((wa[k] - wb[k]).abs().max() / wb[k].abs().max().clamp_min(1e-30)) for k in wa)
    return diffs


@pytest.fixture(scope="module")
def runs(tmp_path_factory, toy_dir):
    """One process for 200 and 250 steps, and 2 torchrun ranks for 200 steps, on the same global batches."""
    tmp = tmp_path_factory.mktemp("dp")
    c200, c250 = _config(tmp, toy_dir, 200), _config(tmp, toy_dir, 250)
    two = _torchrun(
        ["train", "--config", str(c200), "--out", str(tmp / "two"), "--no-progress"],
    )
    _train_here(c200, tmp / "one200")
    _train_here(c250, tmp / "one250")
    return {"tmp": tmp, "c250": c250, "two": two}


def test_two_ranks_give_the_one_process_weights(runs):
    tmp = runs["tmp"]
    diffs = _max_rel_diff(tmp / "two", tmp / "one200")
    assert max(diffs.values()) <= TOLERANCE, diffs
    # AuxK ran: some latents were dead during training (otherwise its global variances went untested).
    for name in ("topk-k4", "batchtopk-k4"):
        logged = [json.loads(line) for line in (tmp / "two" / name / "metrics.jsonl").read_text().splitlines()]
        assert all("auxk" in r for r in logged)
        assert any(r["auxk"] > 0 for r in logged), name


def test_only_rank_zero_writes(runs):
    tmp = runs["tmp"]
    for name in NAMES:
        # The same files as the one-process run, and each log line once (two writers would double them).
        assert sorted(p.name for p in (tmp / "two" / name).iterdir()) == sorted(
            p.name for p in (tmp / "one200" / name).iterdir()
        )
        lines = (tmp / "two" / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == [50, 100, 150, 200]
    assert sorted(p.name for p in (tmp / "two").iterdir()) == sorted(p.name for p in (tmp / "one200").iterdir())
    out = runs["two"].stdout
    printed = [line.split(":")[0] for line in out.splitlines()]
    assert sorted(printed) == sorted(NAMES), out  # one summary, from rank 0


def test_two_rank_checkpoint_resumes_in_one_process(runs):
    tmp = runs["tmp"]
    resumed = tmp / "two-resumed"
    shutil.copytree(tmp / "two", resumed)
    _train_here(runs["c250"], resumed, resume=True)
    diffs = _max_rel_diff(resumed, tmp / "one250")
    assert max(diffs.values()) <= TOLERANCE, diffs


def test_world_shards_equal_slices():
    x = torch.arange(12.0).reshape(6, 2)
    parts = [World(rank=r, size=3).shard(x) for r in range(3)]
    assert torch.equal(torch.cat(parts), x)
    assert World().shard(x) is x
    with pytest.raises(ConfigError, match="batch_size"):
        World(rank=0, size=3).check_batch(256)
