"""Matched sparsity: target_l0 adapts each method's own knob until the held-out L0 meets the target."""

import json

import pytest
import torch

from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.errors import ConfigError
from saelab.evals.evaluate import evaluate
from saelab.formats.folder import load_sae
from saelab.methods.base import SparsityKnob
from saelab.methods.resolve import resolve_sae, sparsity_knob
from saelab.training.l0_control import L0Controller, read_knob
from saelab.training.trainer import Trainer


def _train(toy_dir, tmp_path, steps, **sae):
    cfg = SAEConfig(name="s", n_latents=64, lr=3e-3, **sae).validate()
    run = RunConfig(
        TrainConfig(
            activations=str(toy_dir / "activations.npy"), steps=steps, batch_size=128, out=str(tmp_path / "run")
        ),
        [cfg],
    )
    Trainer(run, progress=False).fit()
    return tmp_path / "run"


@pytest.mark.parametrize(
    "sae,steps,tol",
    [
        (dict(method="relu", penalty="l1", target_l0=6.0), 900, 0.2),
        # JumpReLU's threshold answers l0_coef slowly: it needs a longer warm phase than a penalty.
        (dict(method="jumprelu", method_params={"bandwidth": 0.05, "init_threshold": 0.2}, target_l0=6.0), 2000, 0.25),
    ],
)
def test_penalty_and_jumprelu_land_near_the_target(toy_dir, tmp_path, sae, steps, tol):
    folder = _train(toy_dir, tmp_path, steps, **sae)
    record = json.loads((folder / "saelab.json").read_text())
    assert record["target_l0"]["target"] == 6.0
    model = load_sae(folder)
    l0 = evaluate(model, str(toy_dir / "activations.npy"), rows="all").l0
    assert abs(l0 - 6.0) / 6.0 < tol, l0
    # The chosen coefficient is what the saved SAE uses, so reloading reproduces the L0.
    assert read_knob(model, sparsity_knob(model.cfg)) == pytest.approx(record["target_l0"]["value"])


def test_topk_family_takes_k_from_the_target():
    assert resolve_sae(SAEConfig(n_latents=64, method="topk", target_l0=7.4)).method_params["k"] == 7
    assert resolve_sae(SAEConfig(n_latents=64, method="batchtopk", target_l0=5)).method_params["k"] == 5
    with pytest.raises(ConfigError) as e:
        resolve_sae(SAEConfig(n_latents=64, method="topk", method_params={"k": 3}, target_l0=8))
    assert e.value.field == "k"


@pytest.mark.parametrize(
    "bad", [dict(target_l0=-1.0), dict(target_l0=100.0), dict(target_l0=4.0, target_l0_warmup=1.5)]
)
def test_bad_targets_name_the_field(bad):
    with pytest.raises(ConfigError) as e:
        SAEConfig(n_latents=64, method="relu", penalty="l1", **bad).validate()
    assert e.value.field.startswith("target_l0")


def test_relu_without_a_penalty_has_nothing_to_adapt():
    with pytest.raises(ConfigError) as e:
        resolve_sae(SAEConfig(n_latents=64, method="relu", target_l0=4.0))
    assert e.value.field == "target_l0"


class _FakeSAE:
    """An SAE stand-in whose L0 is a known power law of alpha: L0 = 40 · alpha^-0.8."""

    def __init__(self):
        self.cfg = SAEConfig(n_latents=64, method="relu", penalty="l1", alpha=1.0, target_l0=5.0).validate()


def test_controller_converges_on_a_known_power_law():
    sae = _FakeSAE()
    ctl = L0Controller.for_member(sae, total_steps=2000, eps=0.01)
    assert ctl is not None and isinstance(ctl.knob, SparsityKnob)
    for step in range(ctl.warm_steps):
        l0 = 40 * sae.cfg.alpha**-0.8 if sae.cfg.alpha > 0 else 64
        l0 = min(l0, 64)
        z = torch.zeros(4, 64)
        z[:, : max(1, round(l0))] = 1.0
        ctl.update(sae, z, step)
    final = min(64, 40 * sae.cfg.alpha**-0.8)
    assert abs(final - 5.0) <= 1.0
    # After the warm phase the coefficient is frozen.
    before = sae.cfg.alpha
    ctl.update(sae, torch.ones(4, 64), ctl.warm_steps + 5)
    assert sae.cfg.alpha == before


def _l1_sae(alpha=0.0, target=6.0):
    from saelab.model.sae import SparseAutoencoder

    cfg = SAEConfig(n_latents=16, method="relu", penalty="l1", alpha=alpha, target_l0=target, d_in=4).validate()
    sae = SparseAutoencoder(cfg)
    sae.initialize_from_data(
        torch.randn(256, 4, generator=torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1)
    )
    return sae


def test_calibrated_start_makes_the_penalty_a_fixed_share_of_the_reconstruction_loss():
    from saelab.training.l0_control import START_SHARE
    from saelab.training.objective import dense_step

    sae = _l1_sae()
    ctl = L0Controller.for_member(sae, total_steps=100, eps=0.01)
    assert ctl.calibrate
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        first = dense_step(sae, x, sae.cfg.alpha, None)  # the first step runs at the knob's tiny initial α
    ctl.update(sae, first.z, 0, first.losses)
    # By hand: L1 is the batch mean of Σ|z|, and α is START_SHARE · mse / L1.
    l1 = float(first.z.abs().sum(dim=-1).mean())
    assert sae.cfg.alpha == pytest.approx(START_SHARE * float(first.losses["mse"]) / l1, rel=1e-5)
    with torch.no_grad():
        again = dense_step(sae, x, sae.cfg.alpha, None)  # same weights, same batch
    assert float(again.losses["penalty"]) / float(again.losses["mse"]) == pytest.approx(START_SHARE, rel=1e-5)


def test_calibration_reads_the_step_that_ran_and_happens_once():
    sae = _l1_sae()
    ctl = L0Controller.for_member(sae, total_steps=100, eps=0.01)
    alpha0 = ctl.value
    # mse 8 and an unweighted penalty of 2 (the step weighted it by alpha0): α = 0.2 · 8 / 2.
    ctl.update(sae, torch.ones(2, 16), 0, {"mse": torch.tensor(8.0), "penalty": torch.tensor(2.0 * alpha0)})
    assert sae.cfg.alpha == pytest.approx(0.8)
    ctl.update(sae, torch.ones(2, 16), 1, {"mse": torch.tensor(80.0), "penalty": torch.tensor(2.0)})
    assert sae.cfg.alpha == pytest.approx(0.8)


def test_an_explicit_alpha_is_kept_as_the_start():
    sae = _l1_sae(alpha=0.5)
    ctl = L0Controller.for_member(sae, total_steps=100, eps=0.01)
    assert not ctl.calibrate
    ctl.update(sae, torch.ones(2, 16), 0, {"mse": torch.tensor(8.0), "penalty": torch.tensor(1.0)})
    assert sae.cfg.alpha == 0.5


def test_normalised_penalties_can_reach_far_larger_alpha_than_l1():
    knob = lambda p: sparsity_knob(SAEConfig(n_latents=8, penalty=p))
    assert knob("smoothed_l0").high >= 1e4 * knob("l1").high
    assert knob("freshman").high >= 1e4 * knob("l1").high


def _drive(values, target=32.0, start=1.0):
    """Feed the controller one period per L0 value (constant within the period); return the coefficient after each."""
    sae = _FakeSAE()
    sae.cfg.alpha = start
    ctl = L0Controller.for_member(sae, total_steps=10_000, eps=0.01)
    ctl.target = target
    out = []
    for i, l0 in enumerate(values):
        z = torch.zeros(2, 64)
        z[:, : int(l0)] = 1.0
        for phase in range(ctl.period):
            ctl.update(sae, z, i * ctl.period + phase)
        out.append(sae.cfg.alpha)
    return out


def test_pushes_towards_sparsity_at_most_by_the_push_factor_and_eases_faster():
    from saelab.training.l0_control import EASE_FACTOR, PUSH_FACTOR

    up = _drive([64], target=2.0)  # 32× too dense: α rises by PUSH_FACTOR, no more
    assert up[0] == pytest.approx(PUSH_FACTOR)
    down = _drive([1], target=60.0)  # 60× too sparse: α falls by more than a push may move it, within EASE_FACTOR
    assert 1.0 / EASE_FACTOR <= down[0] < 1.0 / PUSH_FACTOR


def test_no_push_while_l0_is_already_falling_onto_the_target():
    sae = _FakeSAE()
    sae.cfg.alpha = 1.0
    ctl = L0Controller.for_member(sae, total_steps=10_000, eps=0.01)
    ctl.target = 32.0
    # L0 above target but halving within the period: it will cross the target on its own.
    for phase in range(ctl.period):
        z = torch.zeros(2, 64)
        z[:, : 64 if phase < ctl.period // 2 else 40] = 1.0
        ctl.update(sae, z, phase)
    assert sae.cfg.alpha <= 1.0


def test_short_l1_run_from_the_default_start_lands_near_the_target_without_collapse(toy_dir, tmp_path):
    # 300 steps: the old controller ramped α ×4 per period from 1e-4 here and drove the code towards L0 ≈ 0.
    folder = _train(toy_dir, tmp_path, 300, method="relu", penalty="l1", target_l0=6.0)
    result = evaluate(load_sae(folder), str(toy_dir / "activations.npy"), rows="all")
    assert abs(result.l0 - 6.0) / 6.0 < 0.25, result.l0
    assert result.dead_fraction < 0.25, result.dead_fraction
    assert result.nmse < 0.8, result.nmse  # a collapsed code reconstructs nothing (NMSE ≈ 1)


def test_smoothed_l0_target_counts_latents_past_half_its_step():
    from saelab.model.sae import SparseAutoencoder

    sae = SparseAutoencoder(
        SAEConfig(d_in=4, n_latents=5, penalty="smoothed_l0", penalty_params={"delta": 2.0}, target_l0=2.0).validate()
    )
    ctl = L0Controller.for_member(sae, total_steps=100, eps=0.01)
    assert ctl.level == 1.0 and ctl.record()["level"] == 1.0
    # δ/2 = 1: entries at 0.5 and 0.02 are not on (the step is below one half there), 1.5 and 3 are.
    z = torch.tensor([[0.5, 1.5, 3.0, 0.0, 0.02], [0.0, 0.0, 1.01, 0.99, 0.0]])
    assert ctl.measure(z) == pytest.approx((2 + 1) / 2)


def test_jumprelu_target_init_starts_at_the_target():
    from saelab.model.sae import SparseAutoencoder

    x = torch.randn(3000, 16, generator=torch.Generator().manual_seed(0)) * 5
    sae = SparseAutoencoder(
        SAEConfig(
            d_in=16, n_latents=128, method="jumprelu", target_l0=8.0, method_params={"threshold_init": "target"}
        ).validate()
    )
    sae.initialize_from_data(x, torch.Generator().manual_seed(1))
    with torch.no_grad():
        l0 = float((sae.encode(x) != 0).sum(dim=-1).float().mean())
    assert l0 == pytest.approx(8.0, rel=0.05)
    fixed = SparseAutoencoder(
        SAEConfig(
            d_in=16, n_latents=128, method="jumprelu", target_l0=8.0, method_params={"init_threshold": 0.01}
        ).validate()
    )
    fixed.initialize_from_data(x, torch.Generator().manual_seed(1))
    assert torch.allclose(fixed.activation.threshold, torch.full((128,), 0.01))
    # No target: nothing to start from, init_threshold it is.
    free = SparseAutoencoder(
        SAEConfig(d_in=16, n_latents=128, method="jumprelu", method_params={"threshold_init": "target"}).validate()
    )
    free.initialize_from_data(x, torch.Generator().manual_seed(1))
    assert torch.allclose(free.activation.threshold, torch.full((128,), 0.001))


def test_jumprelu_threshold_init_is_checked():
    with pytest.raises(ConfigError, match="threshold_init"):
        resolve_sae(SAEConfig(n_latents=8, method="jumprelu", method_params={"threshold_init": "data"}))


def test_evaluation_reports_the_l0_a_level_target_counts():
    from saelab.evals.reconstruction import evaluate_batches
    from saelab.experiments.reproduce.measures import target_measured_l0
    from saelab.model.sae import SparseAutoencoder

    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0)) * 3
    sae = SparseAutoencoder(
        SAEConfig(d_in=8, n_latents=32, penalty="smoothed_l0", penalty_params={"delta": 1.0}, target_l0=4.0).validate()
    )
    sae.initialize_from_data(x, torch.Generator().manual_seed(1))
    result = evaluate_batches(sae, [x[:200], x[200:]])
    with torch.no_grad():
        z = sae.encode(x)
    assert result.level == 0.5
    assert result.l0_level == pytest.approx(float((z > 0.5).sum(dim=-1).double().mean()))
    assert result.l0_level < result.l0_eps  # the level is above ε, so fewer latents count
    assert target_measured_l0(result.to_dict()) == result.l0_level
    # Other methods keep the eval record as it was: no level, the target counted above ε.
    plain = evaluate_batches(
        SparseAutoencoder(SAEConfig(d_in=8, n_latents=32, penalty="l1", target_l0=4.0).validate()), [x]
    )
    assert "l0_level" not in plain.to_dict() and target_measured_l0(plain.to_dict()) == plain.l0_eps
    # The first measure a row has decides, zero included: nothing above the level is a miss, not a fall-back.
    assert target_measured_l0({"l0_level": 0.0, "l0_eps": 30.0, "l0": 300.0}) == 0.0
    assert target_measured_l0({"l0": 12.0}) == 12.0 and target_measured_l0({"l0": float("nan")}) is None


def test_training_logs_the_l0_a_level_target_counts(toy_dir, tmp_path):
    folder = _train(toy_dir, tmp_path, 30, method="relu", penalty="smoothed_l0", target_l0=6.0)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(0 <= r["l0_level"] <= r["l0_eps"] <= r["l0"] for r in rows if "l0" in r)
    assert json.loads((folder / "saelab.json").read_text())["target_l0"]["level"] == 0.5
