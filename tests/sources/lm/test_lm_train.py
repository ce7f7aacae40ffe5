"""`saelab lm train`: SAEs on several sites of a tiny live HF model, streamed text, exact resume, 2-rank equality."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from _features_util import CTX, one_thread, text_file, tiny_model_dir  # noqa: F401
from cli_harness import TORCHRUN, cli, error_line, run_torchrun

import saelab
from saelab.cli import build_parser
from saelab.commands.lm_train import build_run
from saelab.errors import ConfigError
from saelab.sources.lm.model import LMSpec, load_lm
from saelab.sources.lm.online_trainer import OnlineTrainer
from saelab.sources.lm.stream import OnlineConfig, OnlineStream, parse_sites


@pytest.fixture(scope="module")
def lm_and_text(tmp_path_factory):
    root = tmp_path_factory.mktemp("online")
    return tiny_model_dir(root), text_file(root, lines=400)


def _argv(model: str, text: str, out: Path, *extra: str) -> list[str]:
    return [
        "lm",
        "train",
        "--model",
        model,
        "--text",
        text,
        "--sites",
        "1,2:mlp_out",
        "--tokens",
        "1920",
        "--batch-size",
        "64",
        "--n-latents",
        "48",
        "--method",
        "topk",
        "--k",
        "4",
        "--context",
        str(CTX),
        "--lm-batch-size",
        "4",
        "--buffer-tokens",
        "256",
        "--eval-tokens",
        "120",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def _trainer(argv: list[str]) -> tuple[OnlineTrainer, object]:
    args = build_parser().parse_args(argv)
    run, online, index = build_run(args)
    return OnlineTrainer(run, online, index, progress=False), args


def test_parse_sites_reads_one_kind_for_all_or_one_per_layer():
    assert parse_sites("3,6,9") == ((3, "resid_post"), (6, "resid_post"), (9, "resid_post"))
    assert parse_sites("3,6:mlp_out") == ((3, "mlp_out"), (6, "mlp_out"))
    assert parse_sites("3:attn_out,6") == ((3, "attn_out"), (6, "resid_post"))
    for bad in ("", "x", "3:bogus"):
        with pytest.raises(ConfigError, match="sites"):
            parse_sites(bad)


def test_lm_train_writes_one_folder_per_site_that_lm_eval_reads(lm_and_text, tmp_path):
    model, text = lm_and_text
    code, out, err = cli(*_argv(model, text, tmp_path / "run"))
    assert code == 0, err
    for layer in (1, 2):
        folder = tmp_path / "run" / f"blocks.{layer}.hook_mlp_out"
        meta = json.loads((folder / "cfg.json").read_text())["metadata"]
        assert (
            meta["hook_name"] == f"blocks.{layer}.hook_mlp_out"
            and meta["model_name"] == "gpt2"
            and meta["context_size"] == CTX
        )
        record = json.loads((folder / "saelab.json").read_text())
        assert record["dataset"] == text and record["tokens"] == 1920
        assert record["source"]["model_path"] == os.path.abspath(model) and record["source"]["site"] == "mlp_out"
        assert record["lm_tokens"] >= 1920  # BOS positions are read by the LM but never trained on
        # The last refills read only what the remaining batches take: at most one forward (4 windows) past it,
        # not the half buffer (128+ rows) a refill to the full buffer would leave unused.
        assert record["lm_tokens"] <= (1920 // (CTX - 1) + 4) * CTX
        sae = saelab.load(folder)
        assert sae.cfg.d_in == 32 and record["eval"]["l0"] == pytest.approx(4.0)
    code, out, err = cli(
        "lm",
        "eval",
        "--model",
        model,
        "--text",
        text,
        "--sae",
        tmp_path / "run" / "blocks.2.hook_mlp_out",
        "--tokens",
        "200",
        "--skip-windows",
        "300",
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["l0"] == pytest.approx(4.0) and 0 < result["nmse"] < 1


def test_every_row_the_lm_yields_is_served_once_and_batches_mix_windows(lm_and_text):
    model, text = lm_and_text
    lm = load_lm(LMSpec(model))
    cfg = OnlineConfig(
        model, text, ((1, "resid_post"),), context=CTX, windows_per_forward=4, buffer_tokens=240, eval_tokens=30
    )
    stream = OnlineStream(lm, cfg, batch_size=40, seed=3)
    served = torch.cat([torch.from_numpy(stream.batch(p)[0][0]) for p in range(12)])
    left = stream.buffers[0][: stream.fill[0]]
    # The same windows straight through the model, position 0 dropped.
    from saelab.sources.lm.text import take_windows

    windows = take_windows(lm.tokenizer, cfg.text_config(), 1, stream.windows)[stream.eval_windows :]
    truth = torch.cat([lm.activations_at(w, stream.sites)[0][0, 1:] for w in windows])
    everything = torch.cat([served, left])
    assert everything.shape == truth.shape
    key = lambda rows: sorted(map(tuple, rows.round(decimals=4).tolist()))
    assert key(everything) == key(truth)
    # A batch draws on many windows (15 rows each), not one or two consecutive ones.
    first = served[:40]
    sources = {int(torch.cdist(r[None], truth).argmin()) // (CTX - 1) for r in first}
    assert len(sources) >= 6


def test_a_stream_that_knows_the_run_length_reads_only_the_windows_it_trains_on(lm_and_text):
    model, text = lm_and_text
    lm = load_lm(LMSpec(model))
    cfg = OnlineConfig(
        model, text, ((1, "resid_post"),), context=CTX, windows_per_forward=4, buffer_tokens=240, eval_tokens=30
    )
    stream = OnlineStream(lm, cfg, batch_size=40, seed=3, total_batches=5)
    served = [stream.batch(p)[0] for p in range(5)]
    # 5 batches of 40 take 200 rows, 15 per window: 14 windows (the last forward cut from 4 windows to 2), not 16 or a buffer's 240.
    assert stream.windows - stream.eval_windows == 14 and stream.fill == [10]
    assert all(b.shape == (1, 40, 32) for b in served)
    extra = stream.batch(5)[
        0
    ]  # asked past the end (a prefetch may): read on from the cursor, not from the cut batch's end
    assert extra.shape == (1, 40, 32) and stream.windows - stream.eval_windows == 16


@pytest.mark.parametrize("ahead", [0, 2])
def test_resume_after_a_crash_gives_the_uninterrupted_weights(lm_and_text, tmp_path, monkeypatch, ahead):
    """The crashed run produces batches `ahead` in a thread (or none); its checkpoints hold the stream as of their step."""
    model, text = lm_and_text
    full, _ = _trainer(_argv(model, text, tmp_path / "full", "--checkpoint-every", "7"))
    full.fit()
    monkeypatch.setattr(OnlineTrainer, "PREFETCH_DEPTH", ahead)

    class Crash(Exception):
        pass

    original, calls = OnlineTrainer._train_step, {"n": 0}

    def crashing(self, m, x, step):
        calls["n"] += 1
        if calls["n"] == 2 * 17 + 1:  # two SAEs a step: dies in step 18, after the checkpoint at 14 and mid-buffer
            raise Crash()
        return original(self, m, x, step)

    monkeypatch.setattr(OnlineTrainer, "_train_step", crashing)
    with pytest.raises(Crash):
        _trainer(_argv(model, text, tmp_path / "cut", "--checkpoint-every", "7"))[0].fit()
    monkeypatch.setattr(OnlineTrainer, "_train_step", original)
    monkeypatch.setattr(OnlineTrainer, "PREFETCH_DEPTH", 0)
    code, _, err = cli(*_argv(model, text, tmp_path / "cut", "--checkpoint-every", "7", "--resume", "--overlap"))
    assert code == 0, err
    for site in ("blocks.1.hook_mlp_out", "blocks.2.hook_mlp_out"):
        a, b = saelab.load(tmp_path / "full" / site), saelab.load(tmp_path / "cut" / site)
        for name, tensor in a.state_dict().items():
            assert torch.equal(tensor, b.state_dict()[name]), (site, name)


def test_config_tables_name_their_site(lm_and_text, tmp_path):
    model, text = lm_and_text
    (tmp_path / "sweep.toml").write_text(
        'n_latents = 48\nmethod = "topk"\n[[sae]]\nname = "k4"\nk = 4\nsite = 1\n'
        '[[sae]]\nname = "k8"\nk = 8\nsite = "blocks.1.hook_resid_post"\n[[sae]]\nname = "k2"\nk = 2\nsite = "2"\n'
    )
    code, _, err = cli(
        "lm",
        "train",
        "--model",
        model,
        "--text",
        text,
        "--config",
        tmp_path / "sweep.toml",
        "--tokens",
        "640",
        "--batch-size",
        "64",
        "--context",
        str(CTX),
        "--lm-batch-size",
        "4",
        "--buffer-tokens",
        "256",
        "--eval-tokens",
        "60",
        "--no-progress",
        "--out",
        tmp_path / "run",
    )
    assert code == 0, err
    l0 = {
        p.parent.name + "/" + p.name: json.loads((p / "eval.json").read_text())["l0"]
        for p in (tmp_path / "run").glob("blocks.*/*")
        if p.is_dir()
    }
    assert l0 == pytest.approx({"blocks.1.hook_resid_post/k4": 4.0, "blocks.1.hook_resid_post/k8": 8.0})
    assert json.loads((tmp_path / "run" / "blocks.2.hook_resid_post" / "eval.json").read_text())["l0"] == pytest.approx(
        2.0
    )


def test_bad_input_is_one_line(lm_and_text, tmp_path):
    model, text = lm_and_text
    assert "sites" in error_line(
        cli(
            "lm",
            "train",
            "--model",
            model,
            "--text",
            text,
            "--tokens",
            "64",
            "--n-latents",
            "8",
            "--out",
            tmp_path / "a",
        )
    )
    assert "buffer_tokens" in error_line(cli(*_argv(model, text, tmp_path / "b", "--buffer-tokens", "100")))
    assert "text" in error_line(cli(*_argv(model, str(tmp_path / "missing.txt"), tmp_path / "c")))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
def test_device_cuda_without_cuda_is_one_line_before_the_model_loads(lm_and_text, tmp_path):
    _, text = lm_and_text
    line = error_line(
        cli(
            "lm",
            "eval",
            "--model",
            tmp_path / "no-model-here",
            "--text",
            text,
            "--sae",
            tmp_path,
            "--layer",
            "1",
            "--site",
            "resid_post",
            "--device",
            "cuda",
        )
    )
    assert "device" in line and "cuda" in line  # the model path does not exist: the device was checked first


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_two_gloo_ranks_equal_one_process(lm_and_text, tmp_path):
    model, text = lm_and_text
    _trainer(_argv(model, text, tmp_path / "one"))[0].fit()

    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(saelab.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    done = run_torchrun(
        ["-m", "saelab", *_argv(model, text, tmp_path / "two")],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for site in ("blocks.1.hook_mlp_out", "blocks.2.hook_mlp_out"):
        a, b = saelab.load(tmp_path / "one" / site), saelab.load(tmp_path / "two" / site)
        for name, tensor in a.state_dict().items():
            torch.testing.assert_close(b.state_dict()[name], tensor, rtol=1e-4, atol=1e-5, msg=f"{site} {name}")


def test_a_stream_that_ran_ahead_saves_the_state_of_an_earlier_batch(lm_and_text):
    model, text = lm_and_text
    lm = load_lm(LMSpec(model))
    cfg = OnlineConfig(
        model,
        text,
        ((1, "resid_post"), (2, "attn_out")),
        context=CTX,
        windows_per_forward=4,
        buffer_tokens=120,
        eval_tokens=30,
    )
    reference = OnlineStream(lm, cfg, batch_size=40, seed=5)
    uninterrupted = [reference.batch(p)[0] for p in range(12)]
    ahead = OnlineStream(lm, cfg, batch_size=40, seed=5)
    for p in range(9):  # a refill every batch or two: the saved states reach back across refills
        ahead.batch(p)
    for position in (3, 5, 7, 9):
        resumed = OnlineStream(lm, cfg, batch_size=40, seed=5)
        resumed.load_state_dict(ahead.state_dict(position))
        for p in range(position, 12):
            assert (resumed.batch(p)[0] == uninterrupted[p]).all(), (position, p)


def test_an_unreachable_dataset_is_one_line_naming_it(lm_and_text, tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model, _ = lm_and_text
    line = error_line(cli(*_argv(model, "no-such-org/no-such-dataset", tmp_path / "d")))
    assert "no-such-org/no-such-dataset" in line


def test_the_online_trainer_is_the_trainer_given_online_data():
    # It defines its constructor and nothing else: the data side plugs in through training.data's public seam.
    assert [name for name, value in vars(OnlineTrainer).items() if callable(value)] == ["__init__"]


def test_overwrite_replaces_a_run_with_several_saes_on_one_site(lm_and_text, tmp_path):
    # Their folders are nested (<hook>/<name>): the swap walks them instead of looking for <hook>.<name>.
    model, text = lm_and_text
    (tmp_path / "two.toml").write_text(
        'n_latents = 48\nmethod = "topk"\n[[sae]]\nname = "k4"\nk = 4\n[[sae]]\nname = "k8"\nk = 8\n'
    )
    argv = ["lm", "train", "--model", model, "--text", text, "--config", tmp_path / "two.toml", "--sites", "1",
            "--batch-size", "64", "--context", str(CTX), "--lm-batch-size", "4", "--buffer-tokens", "256",
            "--eval-tokens", "60", "--no-progress", "--out", tmp_path / "run"]  # fmt: skip
    assert cli(*argv, "--tokens", "320")[0] == 0
    code, _, err = cli(*argv, "--tokens", "640", "--overwrite")
    assert code == 0, err
    site = tmp_path / "run" / "blocks.1.hook_resid_post"
    assert sorted(p.name for p in site.iterdir()) == ["k4", "k8"]
    for name in ("k4", "k8"):
        assert json.loads((site / name / "saelab.json").read_text())["tokens"] == 640, name
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "blocks.1.hook_resid_post",
        "checkpoint.safetensors",
        "run.json",
    ]
