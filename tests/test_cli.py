"""Bad input: one line naming the field and value, exit code 2, nothing overwritten."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from saelab.cli import main


def _train(toy_dir, out, *extra):
    return [
        "train",
        "--activations",
        str(toy_dir / "activations.npy"),
        "--n-latents",
        "16",
        "--steps",
        "5",
        "--batch-size",
        "64",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--method", "topk", "--k", "17"], "k=17"),
        (["--method", "leaky_topk", "--eps", "-0.5"], "eps=-0.5"),
        (["--method", "nope"], "method='nope'"),
        (["--method", "topk", "--delta", "0.5"], "delta=0.5"),
        (["--method", "relu", "--normalize", "weird"], "normalize='weird'"),
        (["--method", "topk", "--steps", "0"], "steps=0"),
        (["--method", "topk", "--k", "2", "--batch-size", "100000"], "batch_size=100000"),
        (["--method", "topk", "--k", "2", "--threads", "0"], "threads=0"),
    ],
)
def test_bad_config_values(toy_dir, tmp_path, capsys, extra, expected):
    assert main(_train(toy_dir, tmp_path / "o", *extra)) == 2
    assert expected in _err(capsys)
    assert not (tmp_path / "o").exists()


def test_non_finite_activations_name_file_and_row(tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((400, 4)).astype(np.float32)
    x[123, 1] = np.inf
    np.save(tmp_path / "x.npy", x)
    code = main(
        [
            "train",
            "--activations",
            str(tmp_path / "x.npy"),
            "--n-latents",
            "8",
            "--steps",
            "2",
            "--batch-size",
            "16",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ]
    )
    assert code == 2
    line = _err(capsys)
    assert "x.npy: row 123" in line and "inf" in line


def test_empty_input_and_d_in_mismatch(toy_dir, tmp_path, capsys):
    np.save(tmp_path / "empty.npy", np.zeros((0, 16), np.float32))
    assert (
        main(["train", "--activations", str(tmp_path / "empty.npy"), "--n-latents", "8", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "no rows" in _err(capsys)
    assert main(_train(toy_dir, tmp_path / "run", "--method", "topk", "--k", "2")) == 0
    capsys.readouterr()
    np.save(tmp_path / "wide.npy", np.zeros((10, 9), np.float32))
    assert main(["eval", "--sae", str(tmp_path / "run"), "--activations", str(tmp_path / "wide.npy")]) == 2
    assert "d_in is 9" in _err(capsys)


def test_existing_run_is_not_overwritten_and_a_broken_checkpoint_is_named(toy_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train(toy_dir, out, "--method", "topk", "--k", "2")) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(_train(toy_dir, out, "--method", "topk", "--k", "3")) == 2
    assert "out=" in _err(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "checkpoint.pt").write_bytes(b"garbage")
    assert main(_train(toy_dir, out, "--method", "topk", "--k", "2", "--resume")) == 2
    assert "checkpoint.pt: unreadable checkpoint" in _err(capsys)
    assert (out / "sae_weights.safetensors").read_bytes() == before["sae_weights.safetensors"]


def test_eval_multi_topk_at_another_k(toy_dir, tmp_path, capsys):
    out = tmp_path / "mt"
    assert main(_train(toy_dir, out, "--method", "multi_topk", "--k", "2")) == 0
    capsys.readouterr()
    assert (
        main(["eval", "--sae", str(out), "--activations", str(toy_dir / "activations.npy"), "--json", "--k", "5"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["l0"] > 2.5


def test_console_script_runs_as_a_process(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "saelab.cli", "methods", "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0
    names = {m["name"] for m in json.loads(proc.stdout)}
    assert {
        "relu",
        "topk",
        "batchtopk",
        "leaky_topk",
        "multi_topk",
        "dimred",
        "jumprelu",
        "l1",
        "lp",
        "smoothed_l0",
        "freshman",
        "without_topk",
    } <= names


def test_documented_run_configs_are_valid():
    from pathlib import Path

    from saelab.methods.mapping import load_toml
    from saelab.methods.resolve import display_name

    docs = Path(__file__).resolve().parents[1] / "docs"
    configs = sorted(docs.glob("*.toml"))
    assert configs, "docs/ should hold the run configs the README quotes"
    for path in configs:
        run = load_toml(str(path)).validate()
        assert run.saes and len({display_name(s) for s in run.saes}) == len(run.saes)


def test_closed_output_pipe_ends_quietly():
    # `saelab ... | head -c 10`: the reader leaves early; no traceback, exit status 141 (SIGPIPE).
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "saelab.cli", "methods", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()  # before the child writes: its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err
