"""Matched sparsity: target_l0 adapts each method's own knob until the held-out L0 meets the target."""

import json

import pytest
import torch

from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.errors import ConfigError
from saelab.evals.evaluate import evaluate
from saelab.folder import load_sae
from saelab.methods.base import SparsityKnob
from saelab.sparsity_control import L0Controller, read_knob
from saelab.train import Trainer


def _train(toy_dir, tmp_path, steps, **sae):
    cfg = SAEConfig(name="s", n_latents=64, lr=3e-3, **sae).validate()
    run = RunConfig(TrainConfig(activations=str(toy_dir / "activations.npy"), steps=steps, batch_size=128, out=str(tmp_path / "run")), [cfg])
    Trainer(run, progress=False).fit()
    return tmp_path / "run"


@pytest.mark.parametrize("sae,steps,tol", [
    (dict(method="relu", penalty="l1", target_l0=6.0), 900, 0.2),
    # JumpReLU's threshold answers l0_coef slowly: it needs a longer warm phase than a penalty.
    (dict(method="jumprelu", method_params={"bandwidth": 0.05, "init_threshold": 0.2}, target_l0=6.0), 2000, 0.25),
])
def test_penalty_and_jumprelu_land_near_the_target(toy_dir, tmp_path, sae, steps, tol):
    folder = _train(toy_dir, tmp_path, steps, **sae)
    record = json.loads((folder / "saelab.json").read_text())
    assert record["target_l0"]["target"] == 6.0
    model = load_sae(folder)
    l0 = evaluate(model, str(toy_dir / "activations.npy"), rows="all").l0
    assert abs(l0 - 6.0) / 6.0 < tol, l0
    # The chosen coefficient is what the saved SAE uses, so reloading reproduces the L0.
    assert read_knob(model, model.cfg.sparsity_knob()) == pytest.approx(record["target_l0"]["value"])


def test_topk_family_takes_k_from_the_target():
    assert SAEConfig(n_latents=64, method="topk", target_l0=7.4).validate().method_params["k"] == 7
    assert SAEConfig(n_latents=64, method="batchtopk", target_l0=5).validate().method_params["k"] == 5
    with pytest.raises(ConfigError) as e:
        SAEConfig(n_latents=64, method="topk", method_params={"k": 3}, target_l0=8).validate()
    assert e.value.field == "k"


@pytest.mark.parametrize("bad", [dict(target_l0=-1.0), dict(target_l0=100.0), dict(target_l0=4.0, target_l0_warmup=1.5)])
def test_bad_targets_name_the_field(bad):
    with pytest.raises(ConfigError) as e:
        SAEConfig(n_latents=64, method="relu", penalty="l1", **bad).validate()
    assert e.value.field.startswith("target_l0")


def test_relu_without_a_penalty_has_nothing_to_adapt():
    with pytest.raises(ConfigError) as e:
        SAEConfig(n_latents=64, method="relu", target_l0=4.0).validate()
    assert e.value.field == "target_l0"


class _FakeSAE:
    """An SAE stand-in whose L0 is a known power law of alpha: L0 = 40 · alpha^-0.8."""

    def __init__(self):
        self.cfg = SAEConfig(n_latents=64, method="relu", penalty="l1", alpha=1e-4, target_l0=5.0).validate()


def test_controller_converges_on_a_known_power_law():
    sae = _FakeSAE()
    ctl = L0Controller.for_member(sae, total_steps=2000, eps=0.01)
    assert ctl is not None and isinstance(ctl.knob, SparsityKnob)
    for step in range(ctl.warm_steps):
        l0 = 40 * sae.cfg.alpha ** -0.8 if sae.cfg.alpha > 0 else 64
        l0 = min(l0, 64)
        z = torch.zeros(4, 64)
        z[:, : max(1, round(l0))] = 1.0
        ctl.update(sae, z, step)
    final = min(64, 40 * sae.cfg.alpha ** -0.8)
    assert abs(final - 5.0) <= 1.0
    # After the warm phase the coefficient is frozen.
    before = sae.cfg.alpha
    ctl.update(sae, torch.ones(4, 64), ctl.warm_steps + 5)
    assert sae.cfg.alpha == before
