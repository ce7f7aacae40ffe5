"""Training: a tiny SAE learns the toy dictionary; sweeps share batches; resume is exact."""

import json

import numpy as np
import pytest
import torch

import saelab
from saelab.cli import main
from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.methods.resolve import display_name
from saelab.training.trainer import Trainer


def _run(toy_dir, out, saes, **train):
    t = TrainConfig(activations=str(toy_dir / "activations.npy"), out=str(out), batch_size=128, log_every=10, **train)
    return RunConfig(t, saes)


def test_topk_sae_recovers_the_true_dictionary(toy_dir, tmp_path):
    run = _run(
        toy_dir, tmp_path / "r", [SAEConfig(n_latents=64, method="topk", method_params={"k": 3}, lr=3e-3)], steps=800
    )
    (member,) = Trainer(run, progress=False).fit()
    dictionary = torch.from_numpy(np.load(toy_dir / "dictionary.npy"))
    from saelab.evals.reconstruction import mmcs

    ev = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert mmcs(member.sae.W_dec, dictionary) > 0.9
    assert ev["nmse"] < 0.3 and ev["l0"] <= 3.0
    log = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["mse"] < 0.5 * log[0]["mse"]
    assert {"loss", "mse", "nmse", "l0", "dead_fraction", "lr", "tokens_per_s", "step", "tokens"} <= set(log[-1])


def test_an_sae_in_a_sweep_equals_the_same_sae_trained_alone(toy_dir, tmp_path):
    a = SAEConfig(n_latents=32, method="topk", method_params={"k": 2}, lr=1e-3)
    b = SAEConfig(n_latents=48, method="relu", penalty="l1", alpha=0.01, lr=1e-3)
    Trainer(_run(toy_dir, tmp_path / "sweep", [a, b], steps=30), progress=False).fit()
    Trainer(
        _run(toy_dir, tmp_path / "alone", [SAEConfig(**{**a.to_dict(), "d_in": None})], steps=30), progress=False
    ).fit()
    together = saelab.load(tmp_path / "sweep" / display_name(a))
    alone = saelab.load(tmp_path / "alone")
    assert torch.equal(together.W_enc, alone.W_enc) and torch.equal(together.W_dec, alone.W_dec)
    assert (tmp_path / "sweep" / display_name(b) / "cfg.json").exists()


class _Crash(Exception):
    pass


@pytest.mark.parametrize(
    "sae",
    [
        SAEConfig(
            n_latents=40, method="batchtopk", method_params={"k": 3}, auxk=True, dead_tokens=256, k_aux=8, lr=2e-3
        ),
        SAEConfig(n_latents=40, method="jumprelu", normalize="scalar", lr=2e-3),
    ],
)
def test_resume_after_a_crash_gives_the_uninterrupted_weights(toy_dir, tmp_path, monkeypatch, sae):
    kw = dict(steps=50, checkpoint_every=10, warmup_steps=5, decay="cosine", decay_fraction=0.5)
    Trainer(_run(toy_dir, tmp_path / "full", [SAEConfig.from_dict(sae.to_dict())], **kw), progress=False).fit()

    original = Trainer._train_step
    calls = {"n": 0}

    def crashing(self, m, x, step):
        calls["n"] += 1
        if calls["n"] == 27:
            raise _Crash()
        return original(self, m, x, step)

    monkeypatch.setattr(Trainer, "_train_step", crashing)
    with pytest.raises(_Crash):
        Trainer(_run(toy_dir, tmp_path / "cut", [SAEConfig.from_dict(sae.to_dict())], **kw), progress=False).fit()
    monkeypatch.setattr(Trainer, "_train_step", original)
    Trainer(_run(toy_dir, tmp_path / "cut", [SAEConfig.from_dict(sae.to_dict())], **kw), progress=False).fit(
        resume=True
    )

    full, cut = saelab.load(tmp_path / "full"), saelab.load(tmp_path / "cut")
    for name, tensor in full.state_dict().items():
        assert torch.equal(tensor, cut.state_dict()[name]), name
    steps = [json.loads(l)["step"] for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicated log lines after the resume


METHOD_ARGS = [
    ["--method", "relu", "--penalty", "l1", "--alpha", "0.02"],
    ["--method", "relu", "--penalty", "lp", "--p", "0.5", "--alpha", "0.02"],
    ["--method", "relu", "--penalty", "smoothed_l0", "--eps", "0.01", "--delta", "0.5", "--alpha", "0.05"],
    ["--method", "relu", "--penalty", "freshman", "--p", "2", "--alpha", "0.5"],
    ["--method", "relu", "--penalty", "without_topk", "--k", "3", "--p", "1", "--alpha", "0.5"],
    ["--method", "topk", "--k", "3", "--auxk", "--dead-tokens", "1000"],
    ["--method", "batchtopk", "--k", "3"],
    ["--method", "leaky_topk", "--k", "3", "--eps", "0.01"],
    ["--method", "leaky_topk", "--k", "3", "--eps", "0.01", "--eps-mode", "absolute"],
    ["--method", "multi_topk", "--k", "3"],
    ["--method", "dimred", "--p", "0.15", "--p-threshold", "10"],
    ["--method", "jumprelu", "--l0-coef", "0.01", "--normalize", "unit"],
    ["--method", "gated", "--alpha", "0.5"],
]


@pytest.mark.parametrize("args", METHOD_ARGS, ids=lambda a: "-".join(a[1:4:2]))
def test_every_method_trains_from_the_cli(toy_dir, tmp_path, args, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--activations",
            str(toy_dir / "activations.npy"),
            "--n-latents",
            "48",
            "--steps",
            "120",
            "--batch-size",
            "128",
            "--lr",
            "2e-3",
            "--log-every",
            "20",
            "--out",
            str(out),
            "--no-progress",
            *args,
        ]
    )
    assert code == 0
    log = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["mse"] < log[0]["mse"]
    assert main(["eval", "--sae", str(out), "--activations", str(toy_dir / "activations.npy"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"l0", "nmse", "explained_variance", "cos_sim", "l2_ratio", "dead_fraction", "dense_fraction"} <= set(result)
    assert result["nmse"] < 1.0


def test_toml_config_trains_several_saes_together(toy_dir, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
activations = "{toy_dir / "activations.npy"}"
out = "{tmp_path / "sweep"}"
steps = 20
batch_size = 128
n_latents = 32
[[sae]]
method = "topk"
k = 2
[[sae]]
method = "relu"
penalty = "lp"
p = 0.5
alpha = 0.01
name = "sqrt"
""")
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 0
    assert (tmp_path / "sweep" / "topk-k2" / "sae_weights.safetensors").exists()
    record = json.loads((tmp_path / "sweep" / "sqrt" / "saelab.json").read_text())
    assert record["sae"]["penalty_params"] == {"p": 0.5}
