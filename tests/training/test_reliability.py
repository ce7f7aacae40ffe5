"""Reliability and security (issue 17): nothing read runs code, no run is lost, configs are read exactly or refused.

Each section is one class of input from the issue; every refusal is one `saelab: error:` line, exit 2.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import pickle
import random
import re
import signal
import struct
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_harness import cli, error_line, snapshot, strict_json, train_args
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

import saelab.training.run_lock
import saelab.util.atomic
from saelab.data.cache import CacheMeta, CacheWriter
from saelab.errors import DataError
from saelab.training.checkpoint import load_checkpoint, save_checkpoint
from saelab.training.run_lock import LOCK_FILE
from saelab.training.trainer import Trainer

SRC = Path(__file__).resolve().parents[2] / "src" / "saelab"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """1,200 rows of 8-dimensional Gaussian activations."""
    path = tmp_path_factory.mktemp("data") / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((1200, 8)).astype(np.float32))
    return path


def weights(folder: Path) -> bytes:
    return (folder / "sae_weights.safetensors").read_bytes()


class _Crash(Exception):
    pass


class Payload:
    """Unpickling this creates the file it names: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---- 1. nothing saelab reads can run code ---------------------------------------------------


def test_the_payload_used_below_really_runs_when_unpickled(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_an_old_pickle_checkpoint_is_refused_without_being_unpickled(data, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    assert cli(*train_args(data, out))[0] == 0
    before = weights(out)
    torch.save({"step": 3, "members": [Payload(marker)]}, out / "checkpoint.pt")
    line = error_line(cli(*train_args(data, out, "--resume", steps=8)))
    assert "checkpoint.pt" in line and "pickle" in line
    assert not marker.exists()
    assert weights(out) == before


def _extra_tensor(path: Path, marker: Path) -> None:
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["evil"] = torch.frombuffer(bytearray(pickle.dumps(Payload(marker))), dtype=torch.uint8)
    save_torch(tensors, str(path), metadata=meta)


def _marker_in_index(path: Path, marker: Path) -> None:
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    state = json.loads(meta["state"])
    state["members"][0]["tracker"] = {"__pickle__": base64.b64encode(pickle.dumps(Payload(marker))).decode()}
    save_torch(tensors, str(path), metadata={**meta, "state": json.dumps(state)})


@pytest.mark.parametrize(
    "plant",
    [
        lambda path, marker: torch.save({"step": 1, "x": Payload(marker)}, path),  # a pickle under the new name
        _extra_tensor,  # hidden as an unnamed tensor beside the real ones
        _marker_in_index,  # hidden in the JSON index under a marker no reader knows
    ],
    ids=["renamed-pickle", "extra-tensor", "index-marker"],
)
def test_a_pickle_hidden_in_or_posing_as_a_checkpoint_is_refused(data, tmp_path, plant):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    assert cli(*train_args(data, out, "--checkpoint-every", "3"))[0] == 0
    plant(out / "checkpoint.safetensors", marker)
    line = error_line(cli(*train_args(data, out, "--checkpoint-every", "3", "--resume", steps=9)))
    assert "checkpoint.safetensors: unreadable checkpoint" in line
    assert not marker.exists()


def test_no_module_unpickles_anything():
    banned = re.compile(
        r"torch\.load\(|pickle\.loads?\(|weights_only\s*=\s*False|allow_pickle\s*=\s*True|import pickle"
    )
    hits = [
        f"{p.relative_to(SRC)}:{i}"
        for p in SRC.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if banned.search(line)
    ]
    assert not hits, hits


def test_checkpoint_state_round_trips_with_its_python_types(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    state = {
        "step": 7,
        "ratio": 0.1 + 0.2,
        "nan": float("nan"),
        "inf": float("-inf"),
        "none": None,
        "flag": True,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        "opt": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 3)}},
            "param_groups": [{"betas": (0.9, 0.999), "params": [0]}],
        },
        "tensors": [
            torch.zeros(0, dtype=torch.uint8),
            torch.arange(5),
            torch.tensor([True, False]),
            torch.randn(2, 2).double(),
        ],
        "__odd_key": {"__tensor__": "not a tensor"},
    }
    save_checkpoint(tmp_path / "c.safetensors", state)
    back = load_checkpoint(tmp_path / "c.safetensors")
    assert back["step"] == 7 and back["ratio"] == 0.1 + 0.2 and back["none"] is None and back["flag"] is True
    assert back["nan"] != back["nan"] and back["inf"] == float("-inf")
    assert back["opt"]["param_groups"][0]["betas"] == (0.9, 0.999) and 0 in back["opt"]["state"]
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], state["opt"]["state"][0]["exp_avg"])
    for a, b in zip(back["tensors"], state["tensors"]):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert back["__odd_key"] == {"__tensor__": "not a tensor"}
    draws = []
    for rng in (back["rng"], state["rng"]):
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        draws.append((torch.randn(3).tolist(), np.random.rand(3).tolist(), random.random()))
    assert draws[0] == draws[1]


def _cache(folder: Path, rows: np.ndarray) -> None:
    meta = CacheMeta(
        model="m",
        site="resid_post",
        layer=0,
        dtype="float32",
        d_in=rows.shape[1],
        context=8,
        tokenizer="t",
        text_source="s",
    )
    w = CacheWriter(str(folder), meta, shard_rows=len(rows))
    w.append(rows)
    w.close()


@pytest.mark.parametrize("name", ["../outside.npy", "ABSOLUTE", "shards/../../outside.npy", "link.npy"])
def test_cache_shard_paths_must_stay_inside_the_cache(tmp_path, name):
    rows = np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32)
    _cache(tmp_path / "cache", rows)
    np.save(tmp_path / "outside.npy", rows)
    if name == "ABSOLUTE":
        name = str(tmp_path / "outside.npy")
    if name == "link.npy":
        (tmp_path / "cache" / "link.npy").symlink_to(tmp_path / "outside.npy")
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    manifest["shards"][0]["file"] = name
    (tmp_path / "cache" / "manifest.json").write_text(json.dumps(manifest))
    line = error_line(
        cli(
            "train",
            "--activations",
            tmp_path / "cache",
            "--n-latents",
            "8",
            "--steps",
            "2",
            "--out",
            tmp_path / "o",
            "--no-progress",
        )
    )
    assert "manifest.json" in line and "outside" in line
    assert not (tmp_path / "o").exists()


def test_a_harvest_folder_cannot_point_its_activations_outside(tmp_path, data):
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "source.json").write_text(json.dumps({"files": {"activations": str(Path("..") / ".." / data)}}))
    line = error_line(
        cli(
            "train",
            "--activations",
            tmp_path / "h",
            "--n-latents",
            "8",
            "--steps",
            "2",
            "--out",
            tmp_path / "o",
            "--no-progress",
        )
    )
    assert "source.json" in line and "outside" in line


# ---- 2. no run is lost or overwritten without being asked -----------------------------------


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_checkpoints_the_current_step_and_resume_reaches_the_same_weights(data, tmp_path, sig, status):
    steps = 300
    args = lambda out: [str(a) for a in train_args(data, out, "--log-every", "2", "--decay", "cosine", steps=steps)]
    out = tmp_path / "cut"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "saelab", *args(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    metrics, deadline = out / "metrics.jsonl", time.time() + 180
    while proc.poll() is None and time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before the signal could be sent"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == status, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "checkpoint saved" in lines[0] and "--resume" in lines[0], lines
    stopped = int(re.search(r"at step (\d+)", lines[0]).group(1))
    assert 0 < stopped < steps
    assert not (out / LOCK_FILE).exists()
    assert load_checkpoint(out / "checkpoint.safetensors")["step"] == stopped
    assert cli(*args(out), "--resume")[0] == 0
    assert cli(*args(tmp_path / "full"))[0] == 0
    assert weights(out) == weights(tmp_path / "full")
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert logged == sorted(set(logged)) and logged[-1] == steps


def test_a_signal_before_training_starts_stops_at_once_and_leaves_the_old_run(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert cli(*train_args(data, out))[0] == 0
    old = snapshot(out)
    original = Trainer._build_members

    def interrupted(self):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the new run is being set up
        return original(self)

    monkeypatch.setattr(Trainer, "_build_members", interrupted)
    code, _, err = cli(*train_args(data, out, "--overwrite", "--n-latents", "12"))
    assert code == 143 and len(err) == 1 and "interrupted by SIGTERM" in err[0] and "old run" in err[0]
    assert snapshot(out) == old
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are put back


def test_overwrite_keeps_the_old_run_until_the_new_one_is_complete(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert cli(*train_args(data, out))[0] == 0
    old = snapshot(out)

    def crash(self):
        raise _Crash()

    monkeypatch.setattr(Trainer, "_build_members", crash)  # killed while setting up the new run
    with pytest.raises(_Crash):
        cli(*train_args(data, out, "--overwrite", "--n-latents", "12"))
    monkeypatch.undo()
    assert snapshot(out) == old  # the old run, whole

    original, calls = Trainer._train_step, {"n": 0}

    def crash_first_step(self, m, x, step):
        calls["n"] += 1
        if calls["n"] == 1:
            raise _Crash()
        return original(self, m, x, step)

    monkeypatch.setattr(Trainer, "_train_step", crash_first_step)  # killed after the new run's first checkpoint
    with pytest.raises(_Crash):
        cli(*train_args(data, out, "--overwrite", "--n-latents", "12"))
    monkeypatch.undo()
    assert snapshot(out) == old  # still the old run: the new one was built beside it and never swapped in
    assert cli(*train_args(data, out, "--overwrite", "--n-latents", "12"))[0] == 0
    assert cli(*train_args(data, tmp_path / "fresh", "--n-latents", "12"))[0] == 0
    assert weights(out) == weights(tmp_path / "fresh")


def test_a_second_training_into_the_same_folder_is_refused_and_a_stale_lock_is_taken_over(data, tmp_path):
    out = tmp_path / "run"
    hold = "import sys, time\nfrom saelab.training.run_lock import RunLock\nlock = RunLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(300)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = error_line(cli(*train_args(data, out)))
        assert f"pid {holder.pid}" in line and "out=" in line
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    finally:
        holder.kill()  # SIGKILL: no cleanup, the lock stays behind
        holder.wait()
    assert (out / LOCK_FILE).exists()
    assert cli(*train_args(data, out))[0] == 0  # the owner is gone: stale, taken over
    assert not (out / LOCK_FILE).exists()


def test_a_lock_from_another_host_or_a_malformed_one_is_respected_and_named(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # filelock's marker: PID, host, process start; a process on another machine cannot be checked from here
    (out / LOCK_FILE).write_text("4242\nsome-other-host\n1\n")
    line = error_line(cli(*train_args(data, out)))
    assert "pid 4242" in line and "out=" in line
    (out / LOCK_FILE).write_text("not a lock record")
    old = time.time() - 60
    os.utime(out / LOCK_FILE, (old, old))  # no owner can be proven dead: the user is told which file to delete
    line = error_line(cli(*train_args(data, out)))
    assert "pid unknown" in line and f"delete {out / LOCK_FILE}" in line
    (out / LOCK_FILE).unlink()
    assert cli(*train_args(data, out))[0] == 0
    assert not (out / LOCK_FILE).exists()


def test_the_lock_goes_when_training_fails_and_a_failed_first_run_leaves_no_folder(data, tmp_path, monkeypatch):
    def fail(self):
        raise DataError("planted failure")

    monkeypatch.setattr(Trainer, "_build_members", fail)
    assert "planted failure" in error_line(cli(*train_args(data, tmp_path / "new")))
    assert not (tmp_path / "new").exists()


def _two_saes_toml(tmp_path, data, a, b, out=None) -> Path:
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f"activations = {json.dumps(str(data))}\nout = {json.dumps(str(out or tmp_path / 'sweep'))}\n"
        "steps = 4\nbatch_size = 32\nn_latents = 8\n"
        f'[[sae]]\nname = {json.dumps(a)}\nmethod = "topk"\nk = 2\n'
        f'[[sae]]\nname = {json.dumps(b)}\nmethod = "topk"\nk = 3\n'
    )
    return cfg


@pytest.mark.parametrize(
    "a,b",
    [
        ("../evil", "ok"),
        ("ABSOLUTE", "ok"),
        ("a/b", "ok"),
        ("a\\b", "ok"),
        ("..", "ok"),
        (".hidden", "ok"),
        ("TopK", "topk"),
        (unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")),
        ("x" * 300, "ok"),
    ],
)
def test_sae_names_are_safe_distinct_folder_names(data, tmp_path, a, b):
    a = str(tmp_path.parent / "abs-target") if a == "ABSOLUTE" else a
    cfg = _two_saes_toml(tmp_path, data, a, b)
    before = snapshot(tmp_path.parent)
    assert "name=" in error_line(cli("train", "--config", cfg, "--no-progress"))
    assert snapshot(tmp_path.parent) == before


def test_every_member_folder_is_checked_before_anything_trains(data, tmp_path):
    sweep = tmp_path / "sweep"
    assert cli(*train_args(data, sweep / "b"))[0] == 0  # an earlier run where the sweep's second SAE would go
    before = snapshot(sweep)
    line = error_line(cli("train", "--config", _two_saes_toml(tmp_path, data, "a", "b", sweep), "--no-progress"))
    assert "already holds a run in" in line and str(sweep / "b") in line
    assert snapshot(sweep) == before and not (sweep / "a").exists()


def test_a_partial_run_is_refused_unless_overwritten(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"step": 999, "stale": True}) + "\n")
    line = error_line(cli(*train_args(data, out)))
    assert "partial run" in line and "--overwrite" in line
    assert "stale" in (out / "metrics.jsonl").read_text()
    assert cli(*train_args(data, out, "--overwrite", "--log-every", "2"))[0] == 0
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [2, 4, 6]


def test_temporary_files_of_an_interrupted_write_are_cleaned_on_the_next_run(data, tmp_path):
    out = tmp_path / "run"
    assert cli(*train_args(data, out))[0] == 0
    leftovers = [
        out / f"{saelab.util.atomic.TEMP_PREFIX}checkpoint.safetensors.x1y2",
        out / f"{saelab.util.atomic.TEMP_PREFIX}metrics.jsonl.z3",
    ]
    for p in leftovers:
        p.write_bytes(b"half a file")
    assert cli(*train_args(data, out, "--resume", steps=8))[0] == 0
    assert not any(p.exists() for p in leftovers)


# ---- 3. resume is the same run or a clear refusal -------------------------------------------


def test_resume_refuses_fewer_steps_and_continues_to_more(data, tmp_path):
    out = tmp_path / "run"
    assert cli(*train_args(data, out, "--log-every", "1"))[0] == 0
    before = weights(out)
    line = error_line(cli(*train_args(data, out, "--log-every", "1", "--resume", steps=4)))
    assert "steps=4" in line and "holds 6 steps" in line
    assert weights(out) == before
    assert cli(*train_args(data, out, "--log-every", "1", "--resume", steps=9))[0] == 0
    record = json.loads((out / "saelab.json").read_text())
    assert record["steps"] == 9 and record["tokens"] == 9 * 32
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 10))
    # A constant learning rate: 6 steps then 3 more are exactly 9 steps.
    assert cli(*train_args(data, tmp_path / "straight", "--log-every", "1", steps=9))[0] == 0
    assert weights(out) == weights(tmp_path / "straight")


def test_resume_checks_the_data_itself_and_a_moved_run_resumes(data, tmp_path):
    mine = tmp_path / "a.npy"
    mine.write_bytes(data.read_bytes())
    out = tmp_path / "run"
    assert cli(*train_args(mine, out))[0] == 0
    # Same path, same shape, same size, other numbers: not the same data.
    np.save(mine, np.random.default_rng(9).standard_normal((1200, 8)).astype(np.float32))
    line = error_line(cli(*train_args(mine, out, "--resume", steps=9)))
    assert "not the data the checkpoint was trained on" in line and "activations=" in line
    # The right bytes, moved, with the run folder moved too: the same run.
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "b.npy").write_bytes(data.read_bytes())
    out.rename(tmp_path / "elsewhere")
    assert cli(*train_args(tmp_path / "moved" / "b.npy", tmp_path / "elsewhere", "--resume", steps=9))[0] == 0
    assert json.loads((tmp_path / "elsewhere" / "run.json").read_text())["train"]["out"] == str(tmp_path / "elsewhere")


# ---- 4. configs are read exactly or refused -------------------------------------------------


def _toml(tmp_path, data, extra: str, sae_table: str = "") -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f"activations = {json.dumps(str(data))}\nout = {json.dumps(str(tmp_path / 'o'))}\n"
        f'steps = 3\nbatch_size = 32\nn_latents = 8\nmethod = "topk"\nk = 2\n{extra}\n{sae_table}'
    )
    return cfg


@pytest.mark.parametrize(
    "line,field",
    [
        ('auxk = "false"', "auxk="),
        ('alpha = "0.1"', "alpha="),
        ("betas = 0.9", "betas="),
        ("betas = [0.9]", "betas="),
        ("sae = 5", "sae="),
        ('method_params = "k=4"', "method_params="),
        ("steps = 1.5", "steps="),
        ("scan = 1", "scan="),
        ("normalize = 3", "normalize="),
        ('lr = "1e-3"', "lr="),
        ("penalty_params = [1, 2]", "penalty_params="),
        ("name = 7", "name="),
        ("seed = true", "seed="),
        ('batch_size = "32"', "batch_size="),
        ('k = "4"', "k="),
        ("eval_activations = 3", "eval_activations="),
        ("checkpoint_every = 1979-05-27", "checkpoint_every="),
    ],
)
def test_toml_values_of_the_wrong_type_name_their_field(data, tmp_path, line, field):
    key = line.split(" =")[0]
    cfg = _toml(tmp_path, data, "")
    text = cfg.read_text()
    lines = [line if existing.split(" =")[0] == key else existing for existing in text.splitlines()]
    cfg.write_text("\n".join(lines if line in lines else lines + [line]) + "\n")
    assert field in error_line(cli("train", "--config", cfg, "--no-progress"))
    assert not (tmp_path / "o").exists()


def test_sae_tables_are_type_checked_too(data, tmp_path):
    cfg = _toml(tmp_path, data, "", '[[sae]]\nn_latents = "8"\n')
    assert "n_latents=" in error_line(cli("train", "--config", cfg, "--no-progress"))
    cfg = _toml(tmp_path, data, "", "sae = [1, 2]\n")
    assert "sae=" in error_line(cli("train", "--config", cfg, "--no-progress"))


@pytest.mark.parametrize(
    "flags,field",
    [
        (["--method", "relu", "--alpha", "0.1"], "alpha=0.1: has no effect without penalty"),
        (["--method", "relu", "--penalty-decoder-norm"], "penalty_decoder_norm=True: has no effect without penalty"),
        (["--method", "topk", "--k", "2", "--k-aux", "4"], "k_aux=4: has no effect without auxk"),
        (["--method", "topk", "--k", "2", "--aux-coef", "0.5"], "aux_coef=0.5: has no effect without auxk"),
        (
            ["--method", "topk", "--k", "2", "--decay-fraction", "0.5"],
            "decay_fraction=0.5: has no effect without decay",
        ),
        (["--method", "topk", "--k", "2", "--l0-coef", "0.1"], "l0_coef=0.1: not a parameter of method 'topk'"),
        (["--method", "relu", "--penalty", "l1", "--k", "3"], "k=3: not a parameter of method 'relu' or penalty 'l1'"),
    ],
)
def test_a_flag_without_effect_is_refused_and_says_why(data, tmp_path, flags, field):
    args = [
        "train",
        "--activations",
        data,
        "--n-latents",
        "8",
        "--steps",
        "2",
        "--out",
        tmp_path / "o",
        "--no-progress",
        *flags,
    ]
    assert field in error_line(cli(*args))


def test_none_means_none_or_is_refused_never_the_default(data, tmp_path):
    base = ["train", "--activations", data, "--n-latents", "8", "--steps", "2", "--batch-size", "32", "--no-progress"]
    assert "k=None" in error_line(cli(*base, "--out", tmp_path / "a", "--method", "topk", "--k", "none"))
    assert cli(*base, "--out", tmp_path / "b", "--method", "dimred", "--p-threshold", "none")[0] == 0
    assert json.loads((tmp_path / "b" / "run.json").read_text())["saes"][0]["method_params"]["p_threshold"] is None
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'activations = {json.dumps(str(data))}\nn_latents = 8\nsteps = 2\nbatch_size = 32\nmethod = "dimred"\n'
        'p_threshold = "none"\npenalty = "none"\n'
    )
    assert cli("train", "--config", cfg, "--out", tmp_path / "c", "--no-progress")[0] == 0
    saved = json.loads((tmp_path / "c" / "run.json").read_text())["saes"][0]
    assert saved["method_params"]["p_threshold"] is None and saved["penalty"] is None


def test_a_config_without_out_takes_the_flag_and_run_json_reproduces_the_run(data, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f"activations = {json.dumps(str(data))}\nn_latents = 8\nsteps = 5\nbatch_size = 32\n"
        '[[sae]]\nmethod = "topk"\nk = 2\nauxk = true\nk_aux = 4\n[[sae]]\nmethod = "relu"\npenalty = "lp"\np = 0.5\nalpha = 0.01\n'
        'normalize = "scalar"\n'
    )
    assert "out=None: required" in error_line(cli("train", "--config", cfg, "--no-progress"))
    assert cli("train", "--config", cfg, "--out", tmp_path / "first", "--no-progress")[0] == 0
    assert (
        cli("train", "--config", tmp_path / "first" / "run.json", "--out", tmp_path / "again", "--no-progress")[0] == 0
    )
    for name in ("topk-k2", "relu-lp-p0.5-a0.01"):
        assert weights(tmp_path / "first" / name) == weights(tmp_path / "again" / name)
    assert "already holds a run" in error_line(
        cli("train", "--config", tmp_path / "first" / "run.json", "--no-progress")
    )


def test_numeric_options_are_checked_at_the_edge(data, tmp_path):
    run = tmp_path / "run"
    assert cli(*train_args(data, run))[0] == 0
    for bad in ("0", "-5"):
        assert f"batch_size={bad}" in error_line(cli("eval", "--sae", run, "--activations", data, "--batch-size", bad))
    assert "seed=-1" in error_line(cli(*train_args(data, tmp_path / "s", "--seed", "-1")))
    assert "seed=-1" in error_line(cli("toy", "--out", tmp_path / "t", "--seed", "-1"))
    assert "noise=nan" in error_line(cli("toy", "--out", tmp_path / "t", "--noise", "nan"))
    assert "epochs=" in error_line(
        cli(
            "train",
            "--activations",
            data,
            "--n-latents",
            "8",
            "--epochs",
            "1e308",
            "--batch-size",
            "32",
            "--out",
            tmp_path / "e",
            "--no-progress",
        )
    )
    np.save(tmp_path / "zero.npy", np.zeros((50, 0), np.float32))
    save_numpy({"activations": np.zeros((50, 0), np.float32)}, str(tmp_path / "zero.safetensors"))
    for f in ("zero.npy", "zero.safetensors"):
        assert "zero columns" in error_line(
            cli("train", "--activations", tmp_path / f, "--n-latents", "4", "--out", tmp_path / "z", "--no-progress")
        )
    dictionary = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    dictionary[3, 2] = np.nan
    np.save(tmp_path / "dict.npy", dictionary)
    line = error_line(cli("eval", "--sae", run, "--activations", data, "--true-dictionary", tmp_path / "dict.npy"))
    assert "dict.npy: row 3" in line and "nan" in line


def test_json_outputs_never_hold_nan(tmp_path):
    np.save(tmp_path / "const.npy", np.ones((400, 6), np.float32))  # zero variance: NMSE is undefined
    out = tmp_path / "run"
    code, stdout, _ = cli(
        "train",
        "--activations",
        tmp_path / "const.npy",
        "--n-latents",
        "8",
        "--steps",
        "4",
        "--batch-size",
        "16",
        "--log-every",
        "1",
        "--out",
        out,
        "--no-progress",
    )
    assert code == 0 and "NMSE n/a" in stdout
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = strict_json(line)
        assert record["nmse"] is None and "zero variance" in record["null_reasons"]["nmse"]
    for name in ("eval.json", "saelab.json", "run.json"):
        strict_json((out / name).read_text())
    code, stdout, _ = cli("eval", "--sae", out, "--activations", tmp_path / "const.npy", "--json")
    result = strict_json(stdout)
    assert code == 0 and result["nmse"] is None and "nmse" in result["null_reasons"]


def _header(tmp_path, name, header, data=b"") -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda t: (t / "short.safetensors").write_bytes(b"\x01\x02") and t / "short.safetensors",
        lambda t: (t / "huge.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}") and t / "huge.safetensors",
        lambda t: _header(t, "list.safetensors", [1, 2]),
        lambda t: _header(t, "junk.safetensors", b"\xff\xfe not json"),
        lambda t: _header(t, "noshape.safetensors", {"activations": {"dtype": "F32"}}),
        lambda t: _header(
            t,
            "offsets.safetensors",
            {"activations": {"dtype": "F32", "shape": [10, 4], "data_offsets": [0, 10**9]}},
            b"\0" * 160,
        ),
        lambda t: _header(
            t,
            "mismatch.safetensors",
            {"activations": {"dtype": "F32", "shape": [50, 4], "data_offsets": [0, 160]}},
            b"\0" * 160,
        ),
        lambda t: _header(
            t,
            "negative.safetensors",
            {"activations": {"dtype": "F32", "shape": [-10, 4], "data_offsets": [0, 160]}},
            b"\0" * 160,
        ),
    ],
    ids=["short", "huge-length", "list", "junk", "no-shape", "offsets-past-end", "shape-vs-bytes", "negative-shape"],
)
def test_malformed_safetensors_headers_are_one_line_naming_the_file(tmp_path, make):
    path = make(tmp_path)
    line = error_line(
        cli(
            "train", "--activations", path, "--n-latents", "4", "--steps", "2", "--out", tmp_path / "o", "--no-progress"
        )
    )
    assert path.name in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.pop("shards"),
        lambda m: m.pop("d_in"),
        lambda m: m.update(shards="x"),
        lambda m: m.update(shards=[]),
        lambda m: m.update(shards=["shard-00000.npy"]),
        lambda m: m["shards"][0].update(rows="300"),
        lambda m: m["shards"][0].pop("file"),
        lambda m: m["shards"][0].update(file=5),
        lambda m: m.update(d_in="8"),
        lambda m: m.update(complete="yes"),
        lambda m: m.update(dtype="int8"),
        lambda m: m.update(n_rows=-1),
        lambda m: m.update(options=[1]),
    ],
    ids=[
        "no-shards",
        "no-d_in",
        "shards-str",
        "shards-empty",
        "shard-str",
        "rows-str",
        "no-file",
        "file-int",
        "d_in-str",
        "complete-str",
        "dtype",
        "n_rows-negative",
        "options-list",
    ],
)
def test_cache_manifests_of_the_wrong_shape_are_one_line_naming_the_manifest(tmp_path, mutate):
    _cache(tmp_path / "cache", np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32))
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    mutate(manifest)
    (tmp_path / "cache" / "manifest.json").write_text(json.dumps(manifest))
    line = error_line(
        cli(
            "train",
            "--activations",
            tmp_path / "cache",
            "--n-latents",
            "8",
            "--steps",
            "2",
            "--out",
            tmp_path / "o",
            "--no-progress",
        )
    )
    assert "manifest.json" in line


def test_output_paths_that_are_files_or_unwritable_are_named(data, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    assert "out=" in error_line(cli(*train_args(data, tmp_path / "file")))
    assert "not a folder" in error_line(cli(*train_args(data, tmp_path / "file")))
    assert "file/below" in error_line(cli(*train_args(data, tmp_path / "file" / "below")))
    assert "exists and is not a folder" in error_line(cli("toy", "--out", tmp_path / "file", "--n-samples", "10"))
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(LOCK_FILE):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(saelab.training.run_lock.os, "open", read_only)
    line = error_line(cli(*train_args(data, tmp_path / "ro")))
    assert "ro'" in line and "Read-only file system" in line


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_named(data, tmp_path):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    try:
        assert "cannot write" in error_line(cli(*train_args(data, tmp_path / "ro")))
    finally:
        os.chmod(tmp_path / "ro", 0o755)


def test_a_full_disk_mid_training_leaves_a_resumable_run(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real, calls = saelab.util.atomic.save_file, {"n": 0}

    def disk_fills(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: the first (step 3) is on disk
            Path(path).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(saelab.util.atomic, "save_file", disk_fills)
    line = error_line(cli(*train_args(data, out, "--checkpoint-every", "3", steps=9)))
    assert str(out / "checkpoint.safetensors") in line and "No space left" in line and "--resume" in line
    monkeypatch.undo()
    assert not [p for p in out.iterdir() if p.name.startswith(saelab.util.atomic.TEMP_PREFIX)]
    assert load_checkpoint(out / "checkpoint.safetensors")["step"] == 3
    assert cli(*train_args(data, out, "--checkpoint-every", "3", "--resume", steps=9))[0] == 0
    assert cli(*train_args(data, tmp_path / "full", "--checkpoint-every", "3", steps=9))[0] == 0
    assert weights(out) == weights(tmp_path / "full")
