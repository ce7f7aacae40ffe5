"""--log: experiment loggers get exactly the records metrics.jsonl holds, one logger run per SAE, config once;
a backend is imported only when asked, and an unknown or uninstalled one is a one-line error naming the extra."""

import glob
import json
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from cli_harness import cli, error_line

from saelab.util import loggers as logging_backends
from saelab.util.loggers import LogTarget

TOPK = ("--method", "topk", "--k", "3", "--n-latents", "32", "--batch-size", "256", "--no-progress")


def _records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


class FakeLogger:
    """Remembers what the trainer sent it."""

    runs: ClassVar[list["FakeLogger"]] = []

    def __init__(self, target: LogTarget):
        self.target, self.configs, self.logged, self.finished = target, [], [], 0
        FakeLogger.runs.append(self)

    def start(self, config):
        self.configs.append(config)

    def log(self, record, step):
        self.logged.append((step, dict(record)))

    def finish(self):
        self.finished += 1


@pytest.fixture
def fake_backend(monkeypatch):
    FakeLogger.runs = []
    monkeypatch.setitem(
        logging_backends._REGISTRY, "fake", logging_backends.Backend("json", "log", lambda: json, FakeLogger)
    )
    return FakeLogger


def test_each_sae_gets_one_run_with_its_records_and_config_once(toy_dir, tmp_path, fake_backend):
    config = tmp_path / "two.toml"
    config.write_text(
        f'activations = "{toy_dir / "activations.npy"}"\nsteps = 30\nlog_every = 10\nbatch_size = 256\nlog = "fake"\n'
        'n_latents = 32\nmethod = "topk"\n[[sae]]\nk = 2\n[[sae]]\nk = 4\n'
    )
    code, _, err = cli("train", "--config", config, "--out", tmp_path / "run", "--no-progress")
    assert code == 0, err
    runs = fake_backend.runs
    assert sorted(r.target.name for r in runs) == ["topk-k2", "topk-k4"]
    assert {r.target.group for r in runs} == {"run"}
    for r in runs:
        assert r.finished == 1 and len(r.configs) == 1
        assert r.configs[0]["sae"]["method_params"] == {"k": int(r.target.name[-1])}
        assert r.configs[0]["train"]["log"] == "fake"
        records = _records(r.target.folder)
        assert [step for step, _ in r.logged] == [10, 20, 30]
        assert [rec for _, rec in r.logged] == records


def test_tensorboard_gets_the_metrics(toy_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    code, _, err = cli(
        "train",
        "--activations",
        toy_dir / "activations.npy",
        "--out",
        out,
        *TOPK,
        "--steps",
        "30",
        "--log-every",
        "10",
        "--log",
        "tensorboard",
    )
    assert code == 0, err
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    nmse = events.Scalars("nmse")
    records = _records(out)
    assert [e.step for e in nmse] == [r["step"] for r in records]
    assert [e.value for e in nmse] == pytest.approx([r["nmse"] for r in records], rel=1e-6)
    assert "config/text_summary" in events.Tags()["tensors"]


def test_unknown_logger_is_a_one_line_error(toy_dir, tmp_path):
    line = error_line(
        cli(
            "train",
            "--activations",
            toy_dir / "activations.npy",
            "--out",
            tmp_path / "x",
            *TOPK,
            "--steps",
            "5",
            "--log",
            "mlflow",
        )
    )
    assert "log='mlflow'" in line and "wandb" in line and "tensorboard" in line
    assert not (tmp_path / "x").exists()


def test_missing_package_names_the_extra(toy_dir, tmp_path, monkeypatch):
    def missing():
        import saelab_no_such_logger  # noqa: F401

    monkeypatch.setitem(
        logging_backends._REGISTRY,
        "gone",
        logging_backends.Backend("saelab_no_such_logger", "log", missing, FakeLogger),
    )
    line = error_line(
        cli(
            "train",
            "--activations",
            toy_dir / "activations.npy",
            "--out",
            tmp_path / "x",
            *TOPK,
            "--steps",
            "5",
            "--log",
            "gone",
        )
    )
    assert "log='gone'" in line and "pip install 'saelab[log]'" in line
    monkeypatch.setitem(sys.modules, "trackio", None)  # as if trackio were not installed (import raises ImportError)
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        f'activations = "{toy_dir / "activations.npy"}"\nsteps = 5\nn_latents = 32\nmethod = "topk"\nk = [2, 4]\n'
    )
    line = error_line(cli("sweep", sweep, "--out", tmp_path / "sweep", "--log", "trackio"))
    assert "log='trackio'" in line and "pip install 'saelab[trackio]'" in line
    assert not (tmp_path / "sweep").exists()  # refused before the sweep folder was claimed


def test_backends_are_imported_only_when_asked(toy_dir, tmp_path):
    heavy = ("wandb", "trackio", "tensorboard", "torch.utils.tensorboard")
    before = {m for m in heavy if m in sys.modules}
    code, _, err = cli(
        "train", "--activations", toy_dir / "activations.npy", "--out", tmp_path / "plain", *TOPK, "--steps", "5"
    )
    assert code == 0, err
    assert {m for m in heavy if m in sys.modules} == before


def test_wandb_offline_writes_the_records_without_network(toy_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "wb"
    code, _, err = cli(
        "train",
        "--activations",
        toy_dir / "activations.npy",
        "--out",
        out,
        *TOPK,
        "--steps",
        "30",
        "--log-every",
        "10",
        "--log",
        "wandb",
    )
    assert code == 0, err
    files = glob.glob(str(out / "wandb" / "offline-run-*" / "*.wandb"))
    assert len(files) == 1
    data = Path(files[0]).read_bytes()
    # wandb's record file holds each history value as its JSON text, and the run's name and config.
    assert b"topk-k3" in data and b"batch_size" in data
    for record in _records(out):
        assert json.dumps(record["nmse"]).encode() in data and json.dumps(record["loss"]).encode() in data
