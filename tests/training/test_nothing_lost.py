"""Nothing lost, nothing mixed, no tracebacks (issue 35): overwrite, sweeps, locks, fingerprints, links, partial folders.

Each section is one item of the issue; every refusal is one `saelab: error:` line, exit 2.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_harness import cli, error_line, snapshot, train_args
from safetensors.torch import load_file, save_file

import saelab
import saelab.util.atomic
from saelab.errors import ConfigError, DataError, SaelabError
from saelab.experiments.sweep import run_sweep
from saelab.experiments.sweep_state import PLAN, RESULTS
from saelab.training.checkpoint import load_checkpoint, save_checkpoint
from saelab.training.run_lock import LOCK_FILE
from saelab.training.trainer import Trainer


@pytest.fixture(autouse=True)
def _own_fingerprint_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAELAB_CACHE_DIR", str(tmp_path / "fp-cache"))


@pytest.fixture
def data(tmp_path) -> Path:
    """1,200 rows of 8-dimensional Gaussian activations."""
    path = tmp_path / "data" / "x.npy"
    path.parent.mkdir()
    np.save(path, np.random.default_rng(0).standard_normal((1200, 8)).astype(np.float32))
    return path


def two_saes(tmp_path, data, out, a="a", b="b") -> Path:
    cfg = tmp_path / f"two-{a}-{b}.toml"
    cfg.write_text(
        f"activations = {json.dumps(str(data))}\nout = {json.dumps(str(out))}\nsteps = 4\nbatch_size = 32\nn_latents = 8\n"
        f'[[sae]]\nname = {json.dumps(a)}\nmethod = "topk"\nk = 2\n[[sae]]\nname = {json.dumps(b)}\nmethod = "topk"\nk = 3\n'
    )
    return cfg


def holder(folder: Path) -> subprocess.Popen:
    """Another process holding the run lock of `folder` (as a running training would)."""
    code = "import sys, time\nfrom saelab.training.run_lock import RunLock\nlock = RunLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(300)"
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
    )
    assert p.stdout.readline().strip() == "held"
    return p


def last_error_line(result) -> str:
    """A command that reports progress on stderr: exit 2, its last line the one `saelab: error:` line, no traceback."""
    code, _, err = result
    assert code == 2, (code, err)
    assert (
        err
        and err[-1].startswith("saelab: error: ")
        and not any("Traceback" in e or e.startswith("saelab: error: ") for e in err[:-1])
    ), err
    return err[-1]


# ---- 1. --overwrite keeps the old run until the new one is complete ------------------------------


@pytest.mark.parametrize("when", ["training", "finish"])
def test_overwrite_keeps_the_old_run_whole_and_loadable_until_the_new_one_is_complete(
    data, tmp_path, monkeypatch, when
):
    out = tmp_path / "run"
    assert cli(*train_args(data, out))[0] == 0
    old = snapshot(out)
    original_step = Trainer._train_step

    def diverges(self, m, x, step):
        if step == 3:
            raise DataError("loss became nan at step 3")  # what a diverged new run reports
        return original_step(self, m, x, step)

    def disk_full(self, members):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.out / "sae_weights.safetensors"))

    if when == "training":
        monkeypatch.setattr(Trainer, "_train_step", diverges)
    else:
        monkeypatch.setattr(Trainer, "_finish", disk_full)
    line = error_line(cli(*train_args(data, out, "--overwrite", "--n-latents", "12", "--checkpoint-every", "2")))
    assert "old run" in line
    monkeypatch.undo()
    assert snapshot(out) == old  # the old run, byte for byte
    assert saelab.load(out).cfg.n_latents == 8
    # The next --overwrite that succeeds replaces it, and leaves nothing of the failed attempt behind.
    assert cli(*train_args(data, out, "--overwrite", "--n-latents", "12"))[0] == 0
    assert saelab.load(out).cfg.n_latents == 12
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_overwrite_of_a_multi_sae_run_keeps_every_old_folder_until_the_end(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert cli("train", "--config", two_saes(tmp_path, data, out), "--no-progress")[0] == 0
    old = snapshot(out)

    def disk_full(self, members):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(members[0].out / "sae_weights.safetensors"))

    monkeypatch.setattr(Trainer, "_finish", disk_full)
    error_line(cli("train", "--config", two_saes(tmp_path, data, out), "--overwrite", "--no-progress"))
    monkeypatch.undo()
    assert snapshot(out) == old
    assert saelab.load(out / "a").cfg.n_latents == 8


# ---- 2. a resumed sweep never mixes data ---------------------------------------------------------


def sweep_config(tmp_path, data, **extra) -> Path:
    cfg = tmp_path / "sweep.toml"
    lines = [
        f"activations = {json.dumps(str(data))}",
        "steps = 4",
        "batch_size = 32",
        "n_latents = 8",
        *(f"{k} = {json.dumps(v)}" for k, v in extra.items()),
        "[[sae]]",
        'method = "topk"',
        "k = [2, 3]",
    ]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def quiet_sweep(cfg, out, **kw):
    return run_sweep(cfg, out, progress=False, say=lambda m: None, report=False, **kw)


def test_a_resumed_sweep_refuses_other_data_between_kill_and_resume(data, tmp_path, monkeypatch):
    cfg, out = sweep_config(tmp_path, data), tmp_path / "sweep"
    calls = {"n": 0}
    original = Trainer.fit

    def killed_after_first_part(self, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, **kw)

    monkeypatch.setattr(Trainer, "fit", killed_after_first_part)
    with pytest.raises(KeyboardInterrupt):
        quiet_sweep(cfg, out, max_memory_gb=1e-6)  # one SAE per part
    monkeypatch.undo()
    x = np.load(data)
    np.save(data, x[::-1].copy())  # other data, same shape and size
    with pytest.raises(ConfigError) as e:
        quiet_sweep(cfg, out, resume=True, max_memory_gb=1e-6)
    assert e.value.field == "activations"


def test_results_rows_are_trusted_only_when_their_folder_agrees(data, tmp_path):
    cfg, out = sweep_config(tmp_path, data), tmp_path / "sweep"
    rows = quiet_sweep(cfg, out)
    truth = {r["name"]: r["nmse"] for r in rows}
    forged = [{**r, "nmse": 0.0001} for r in rows]
    (out / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in forged))
    again = quiet_sweep(cfg, out, resume=True)
    assert {r["name"]: r["nmse"] for r in again} == truth
    assert {r["name"]: r["nmse"] for r in map(json.loads, (out / RESULTS).read_text().splitlines())} == truth


def test_a_repack_on_resume_reuses_finished_saes(data, tmp_path, monkeypatch):
    cfg, out = sweep_config(tmp_path, data), tmp_path / "sweep"
    rows = quiet_sweep(cfg, out, max_memory_gb=100)  # both SAEs in one part
    calls = {"n": 0}
    original = Trainer.fit

    def counted(self, **kw):
        calls["n"] += 1
        return original(self, **kw)

    monkeypatch.setattr(Trainer, "fit", counted)
    again = quiet_sweep(cfg, out, resume=True, max_memory_gb=1e-6)  # would pack one SAE per part
    assert calls["n"] == 0
    assert [r["folder"] for r in again] == [r["folder"] for r in rows]


def test_a_sweep_that_failed_before_its_first_sae_does_not_block_the_corrected_rerun(data, tmp_path):
    out = tmp_path / "sweep"
    bad = tmp_path / "bad.toml"
    bad.write_text(
        sweep_config(tmp_path, data).read_text().replace("n_latents = 8", "n_latents = 8\n[eval]\nbogus = 1")
    )
    with pytest.raises(ConfigError):
        quiet_sweep(bad, out)
    assert len(quiet_sweep(sweep_config(tmp_path, data), out)) == 2


# ---- 3. locks above and below ---------------------------------------------------------------------


@pytest.mark.parametrize("where", ["member", "other-subfolder", "parent"])
def test_a_run_respects_locks_held_below_and_above_it(data, tmp_path, where):
    out = tmp_path / "parent"
    if where == "parent":
        p = holder(out)
        target = ["train", *train_args(data, out / "sub")[1:]]
    else:
        sub = out / ("a" if where == "member" else "single")
        assert cli(*train_args(data, sub))[0] == 0
        assert cli("train", "--config", two_saes(tmp_path, data, out), "--no-progress", "--overwrite")[0] in (0, 2)
        p = holder(sub)
        target = ["train", "--config", two_saes(tmp_path, data, out), "--no-progress", "--overwrite"]
    try:
        before = snapshot(tmp_path)
        line = error_line(cli(*target))
        assert f"pid {p.pid}" in line
        assert snapshot(tmp_path) == before
    finally:
        p.kill()
        p.wait()


def test_a_multi_sae_run_holds_the_lock_of_each_sae_folder(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    seen = {}
    original = Trainer._train_step

    def look(self, m, x, step):
        seen.update({p.name: (p / LOCK_FILE).exists() for p in [out, out / "a", out / "b"]})
        return original(self, m, x, step)

    monkeypatch.setattr(Trainer, "_train_step", look)
    assert cli("train", "--config", two_saes(tmp_path, data, out), "--no-progress")[0] == 0
    assert seen == {"run": True, "a": True, "b": True}
    assert not list(out.rglob(LOCK_FILE))


# ---- 4. the data fingerprint covers every byte ---------------------------------------------------


def test_an_edit_anywhere_in_the_data_is_caught_on_resume(tmp_path):
    path = tmp_path / "big.npy"
    x = np.random.default_rng(1).standard_normal((327_680, 8)).astype(np.float32)  # 10 MB
    np.save(path, x)
    out = tmp_path / "run"
    args = [
        "train",
        "--activations",
        path,
        "--n-latents",
        "8",
        "--batch-size",
        "32",
        "--out",
        out,
        "--no-progress",
        "--method",
        "topk",
        "--k",
        "2",
        "--checkpoint-every",
        "2",
    ]
    assert cli(*args, "--steps", "2")[0] == 0
    for lo in (100_000, 200_001, 327_000):  # between, across and at the end of any sampled blocks
        y = x.copy()
        y[lo : lo + 300] *= -3
        np.save(path, y)
        assert "activations=" in error_line(cli(*args, "--steps", "4", "--resume"))
    np.save(path, x)
    assert cli(*args, "--steps", "4", "--resume")[0] == 0


# ---- 5. no writes through links out of the output folder ----------------------------------------


def test_a_dangling_link_named_like_an_output_file_is_not_written_through(data, tmp_path):
    out, outside = tmp_path / "run", tmp_path / "outside.txt"
    out.mkdir()
    (out / "metrics.jsonl").symlink_to(outside)
    line = error_line(cli(*train_args(data, out, "--overwrite")))
    assert "metrics.jsonl" in line and "link" in line
    assert not outside.exists()


def test_an_sae_folder_that_links_outside_is_refused(data, tmp_path):
    out, outside = tmp_path / "run", tmp_path / "elsewhere"
    outside.mkdir()
    out.mkdir()
    (out / "a").symlink_to(outside, target_is_directory=True)
    line = error_line(cli("train", "--config", two_saes(tmp_path, data, out), "--no-progress", "--overwrite"))
    assert "link" in line
    assert list(outside.iterdir()) == []


def test_a_plain_shard_folder_follows_the_same_link_rule_as_source_json(data, tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "part.npy").symlink_to(data)
    line = error_line(cli(*train_args(folder, tmp_path / "run")))
    assert "part.npy" in line and "links outside" in line


# ---- 6. folders are complete or recognisably partial ---------------------------------------------


def test_a_folder_killed_before_its_saelab_json_is_refused_not_read_as_saelens(data, tmp_path):
    out = tmp_path / "run"
    assert cli(*train_args(data, out, "--normalize", "unit"))[0] == 0
    (out / "saelab.json").unlink()  # killed between cfg.json and saelab.json
    with pytest.raises(DataError, match="partial"):
        saelab.load(out)


def test_a_folder_holding_another_runs_weights_is_refused(data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(*train_args(data, a))[0] == 0
    assert cli(*train_args(data, b, "--seed", "1"))[0] == 0
    (a / "sae_weights.safetensors").write_bytes((b / "sae_weights.safetensors").read_bytes())
    with pytest.raises(DataError, match="sae_weights.safetensors"):
        saelab.load(a)


# ---- 7. the remaining tracebacks and silent cases -----------------------------------------------


def _saelens(folder: Path, arch: str, tensors: dict, **cfg) -> Path:
    folder.mkdir(parents=True)
    base = {"architecture": arch, "d_in": 4, "d_sae": 6, "apply_b_dec_to_input": True, "normalize_activations": "none"}
    (folder / "cfg.json").write_text(json.dumps({**base, **cfg}))
    full = {
        "W_enc": torch.randn(4, 6),
        "b_enc": torch.zeros(6),
        "W_dec": torch.randn(6, 4),
        "b_dec": torch.zeros(4),
        **tensors,
    }
    save_file({k: v for k, v in full.items() if v is not None}, str(folder / "sae_weights.safetensors"))
    return folder


FOREIGN = {
    "threshold-rank": lambda f: _saelens(f, "jumprelu", {"threshold": torch.ones(2, 3)}),
    "threshold-scalar": lambda f: _saelens(f, "jumprelu", {"threshold": torch.ones(())}),
    "r_mag-shape": lambda f: _saelens(
        f,
        "gated",
        {"b_gate": torch.zeros(6), "b_enc": None, "r_mag": torch.zeros(5), "b_mag": torch.zeros(6)},
        apply_b_dec_to_input=False,
    ),
    "hook_name-number": lambda f: _saelens(f, "standard", {}, metadata={"hook_name": 5}),
    "hook_name-list": lambda f: _saelens(f, "standard", {}, metadata={"hook_name": ["blocks.0"]}),
    "W_enc-rank": lambda f: _saelens(f, "standard", {"W_enc": torch.randn(24)}),
    "topk_threshold-shape": lambda f: _saelens(f, "batchtopk", {"topk_threshold": torch.ones(3)}, k=2),
    "nan-weights": lambda f: _saelens(f, "standard", {"W_dec": torch.full((6, 4), float("nan"))}),
    "sparsify-rank": lambda f: _sparsify(f, torch.randn(24)),
    "sparsify-3d": lambda f: _sparsify(f, torch.randn(2, 6, 4)),
}


def _sparsify(folder: Path, enc: torch.Tensor) -> Path:
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps({"k": 2, "activation": "topk"}))
    save_file(
        {"encoder.weight": enc, "encoder.bias": torch.zeros(6), "W_dec": torch.randn(6, 4), "b_dec": torch.zeros(4)},
        str(folder / "sae.safetensors"),
    )
    return folder


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_foreign_folders_of_the_wrong_shape_or_type_are_one_line(tmp_path, kind):
    folder = FOREIGN[kind](tmp_path / "sae")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32))
    line = error_line(cli("eval", "--sae", folder, "--activations", tmp_path / "x.npy", "--json"))
    assert str(folder) in line


@pytest.mark.parametrize(
    "text", ["{not json", "[1, 2]", "{}", '{"config": 3, "saes": "x"}', '{"config": {}, "saes": [1]}']
)
def test_bad_sweep_state_files_are_one_line(data, tmp_path, text):
    out = tmp_path / "sweep"
    (out / "runs" / "seed0").mkdir(parents=True)  # a sweep that started: its state file is what a resume reads
    (out / PLAN).write_text(text)
    line = last_error_line(
        cli("sweep", sweep_config(tmp_path, data), "--out", out, "--resume", "--no-progress", "--no-report")
    )
    assert PLAN in line


@pytest.mark.parametrize("row", ["[1]", '{"folder": "runs/seed0"}', '{"name": 3, "folder": []}'])
def test_bad_results_rows_are_one_line_or_ignored(data, tmp_path, row):
    cfg, out = sweep_config(tmp_path, data), tmp_path / "sweep"
    assert cli("sweep", cfg, "--out", out, "--no-progress", "--no-report")[0] == 0
    (out / RESULTS).write_text(row + "\n")
    code, _, err = cli("sweep", cfg, "--out", out, "--resume", "--no-progress", "--no-report")
    assert code == 0 or (code == 2 and len(err) == 1 and RESULTS in err[0]), err


def test_a_bad_reproduce_source_json_is_one_line(tmp_path):
    from saelab.experiments.reproduce.budget import QUICK, othello_data

    (tmp_path / "source.json").write_text("[1, 2]")
    with pytest.raises(SaelabError, match="source.json"):
        othello_data(QUICK, tmp_path, say=lambda m: None)


def test_a_full_disk_during_a_sweep_is_one_line(data, tmp_path, monkeypatch):
    real = saelab.util.atomic.atomic_write_text

    def full(path, text):
        if str(path).endswith(RESULTS):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, text)

    monkeypatch.setattr(saelab.util.atomic, "atomic_write_text", full)
    import saelab.experiments.sweep_state as sweep_module  # where the results rows are written

    monkeypatch.setattr(sweep_module, "atomic_write_text", full)
    line = last_error_line(
        cli("sweep", sweep_config(tmp_path, data), "--out", tmp_path / "sweep", "--no-progress", "--no-report")
    )
    assert "No space left" in line and RESULTS in line


def test_a_read_only_report_folder_is_one_line(data, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    assert cli("sweep", sweep_config(tmp_path, data), "--out", out, "--no-progress", "--no-report")[0] == 0
    before = snapshot(out)
    real_replace = os.replace

    def read_only(src, dst, *a, **kw):  # what a read-only mount answers (the tests may run as root)
        if "report" in str(dst):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", read_only)
    line = error_line(cli("report", out, "--out", tmp_path / "ro" / "report"))
    assert "Read-only file system" in line and "report" in line
    monkeypatch.undo()
    assert snapshot(out) == before


def test_a_swap_cut_short_is_finished_by_the_next_run(data, tmp_path, monkeypatch):
    import saelab.training.run_folder

    out = tmp_path / "run"
    assert cli(*train_args(data, out))[0] == 0
    real_replace = os.replace

    def killed_mid_swap(src, dst, *a, **kw):
        if str(src).endswith("/.saelab-new/saelab.json"):  # the swap moving the new saelab.json in
            raise KeyboardInterrupt  # the power goes between two renames of the swap
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(saelab.training.run_folder.os, "replace", killed_mid_swap)
    assert cli(*train_args(data, out, "--overwrite", "--n-latents", "12"))[0] == 130
    monkeypatch.undo()
    assert (out / ".saelab-new" / ".saelab-complete").exists()  # the plan of the swap, on disk before it began
    # The next run into the folder finishes the swap first: one whole run, the new one, never a mix.
    code, _, err = cli(*train_args(data, out, "--resume", "--n-latents", "12"))
    assert code == 0, err
    assert saelab.load(out).cfg.n_latents == 12
    assert not (out / ".saelab-new").exists() and not (out / ".saelab-old").exists()


@pytest.mark.parametrize("step", [-3, "3", 2.5, True, None])
def test_a_checkpoint_step_that_is_not_a_count_is_refused(data, tmp_path, step):
    out = tmp_path / "run"
    assert cli(*train_args(data, out, "--checkpoint-every", "3", steps=9))[0] == 0
    state = load_checkpoint(out / "checkpoint.safetensors")
    state["step"] = step
    save_checkpoint(out / "checkpoint.safetensors", state)
    line = error_line(cli(*train_args(data, out, "--checkpoint-every", "3", "--resume", steps=12)))
    assert "checkpoint.safetensors" in line and "step" in line


def test_non_finite_weights_in_a_folder_or_checkpoint_are_refused(data, tmp_path):
    out = tmp_path / "run"
    assert cli(*train_args(data, out, "--checkpoint-every", "3", steps=9))[0] == 0
    w = load_file(str(out / "sae_weights.safetensors"))
    w["W_dec"][0, 0] = float("nan")
    save_file(w, str(out / "bad_weights.safetensors"))
    good = (out / "sae_weights.safetensors").read_bytes()
    os.replace(out / "bad_weights.safetensors", out / "sae_weights.safetensors")
    with pytest.raises(DataError, match="sae_weights.safetensors"):  # not the weights saelab.json was written with
        saelab.load(out)
    record = json.loads((out / "saelab.json").read_text())
    record.pop("files")  # a folder from before saelab.json named its files: the values themselves are checked
    (out / "saelab.json").write_text(json.dumps(record))
    with pytest.raises(DataError, match="W_dec"):
        saelab.load(out)
    (out / "sae_weights.safetensors").write_bytes(good)
    state = load_checkpoint(out / "checkpoint.safetensors")
    state["members"][0]["model"]["W_enc"][0, 0] = float("inf")
    save_checkpoint(out / "checkpoint.safetensors", state)
    line = error_line(cli(*train_args(data, out, "--checkpoint-every", "3", "--resume", steps=12)))
    assert "checkpoint.safetensors" in line and "W_enc" in line


def test_activations_too_small_for_float32_are_refused(tmp_path):
    path = tmp_path / "tiny.npy"
    np.save(path, (np.random.default_rng(0).standard_normal((400, 8)) * 1e-42).astype(np.float32))
    line = error_line(cli(*train_args(path, tmp_path / "run")))
    assert "activations=" in line and "small" in line


def test_toy_refuses_to_overwrite_existing_data(tmp_path):
    out = tmp_path / "toy"
    assert cli("toy", "--out", out, "--n-samples", "20", "--n-features", "8", "--d", "4")[0] == 0
    before = snapshot(out)
    line = error_line(cli("toy", "--out", out, "--n-samples", "30", "--n-features", "8", "--d", "4", "--seed", "3"))
    assert "out=" in line and "--overwrite" in line
    assert snapshot(out) == before
    assert cli("toy", "--out", out, "--n-samples", "30", "--n-features", "8", "--d", "4", "--overwrite")[0] == 0
