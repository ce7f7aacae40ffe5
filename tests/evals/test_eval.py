"""Evaluation metrics against hand-computed values."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saelab.evals.reconstruction import ReconstructionAccumulator, mmcs, reconstruction_metrics


def test_metrics_match_hand_computation():
    x = torch.tensor([[3.0, 0.0], [1.0, 2.0], [2.0, 4.0]])
    x_hat = torch.tensor([[2.0, 0.0], [1.0, 1.0], [2.0, 4.0]])
    z = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    m = reconstruction_metrics(x, x_hat, z)
    mean = x.mean(0)
    var = ((x - mean) ** 2).sum()
    assert m["nmse"] == pytest.approx(2.0 / var.item())
    assert m["explained_variance"] == pytest.approx(1 - 2.0 / var.item())
    assert m["l0"] == pytest.approx(1.0)
    cos = [1.0, 3 / (np.sqrt(5) * np.sqrt(2)), 1.0]
    assert m["cos_sim"] == pytest.approx(np.mean(cos))
    assert m["l2_ratio"] == pytest.approx(np.mean([2 / 3, np.sqrt(2) / np.sqrt(5), 1.0]))
    assert m["mse"] == pytest.approx(2.0 / 3)


def test_explained_variance_is_measured_around_the_mean_not_zero():
    torch.manual_seed(0)
    x = torch.randn(500, 8) * 0.1 + 10.0  # a large offset: around zero almost everything looks explained
    x_hat = x.mean(0).expand_as(x).clone()  # predicting the mean explains nothing
    m = reconstruction_metrics(x, x_hat, torch.ones(500, 4))
    assert m["explained_variance"] == pytest.approx(0.0, abs=1e-9)
    around_zero = 1 - ((x - x_hat) ** 2).sum() / (x**2).sum()
    assert around_zero > 0.99


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 7), st.integers(0, 1000))
def test_streaming_is_independent_of_batching(parts, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g)
    x_hat = x + 0.3 * torch.randn(64, 5, generator=g)
    z = torch.relu(torch.randn(64, 9, generator=g))
    whole = ReconstructionAccumulator(9, 5)
    whole.add(x, x_hat, z)
    split = ReconstructionAccumulator(9, 5)
    for chunk in np.array_split(np.arange(64), parts):
        if len(chunk):
            split.add(x[chunk], x_hat[chunk], z[chunk])
    a, b = whole.result("none"), split.result("none")
    for key in ("nmse", "l0", "cos_sim", "l2_ratio", "dead_fraction", "dense_fraction", "relative_reconstruction_bias"):
        assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-9)
    assert a.activation_value_hist == b.activation_value_hist and sum(a.activation_value_hist["counts"]) > 0


def test_dead_dense_and_histograms():
    z = torch.zeros(100, 4)
    z[:, 0] = 1.0  # fires always: dense
    z[:5, 1] = 1.0  # 5%: neither
    z[:11, 2] = 1.0  # 11%: dense
    acc = ReconstructionAccumulator(4, 2)
    acc.add(torch.randn(100, 2), torch.randn(100, 2), z)
    r = acc.result("none")
    assert r.dead_fraction == 0.25 and r.dense_fraction == 0.5
    assert r.active_latents_hist == {"1": 89, "2": 6, "3": 5}
    assert sum(r.firing_density_hist["counts"]) == 3 and r.firing_density_hist["dead"] == 1


def test_mmcs_is_one_for_a_permuted_scaled_dictionary_and_lower_otherwise():
    d = torch.nn.functional.normalize(torch.randn(10, 6), dim=-1)
    learned = torch.cat([d[torch.randperm(10)] * 3, torch.randn(5, 6)])
    assert mmcs(learned, d) == pytest.approx(1.0)
    assert mmcs(torch.randn(10, 6), d) < 0.95


def test_relative_reconstruction_bias_detects_shrinkage():
    x = torch.randn(200, 4)
    acc = ReconstructionAccumulator(1, 4)
    acc.add(x, 0.5 * x, torch.ones(200, 1))
    assert acc.result("none").relative_reconstruction_bias == pytest.approx(0.5)


def test_python_evaluate_matches_the_cli(toy_dir, tmp_path, capsys):
    import json

    import saelab
    from saelab.cli import main

    out = tmp_path / "s"
    assert (
        main(
            [
                "train",
                "--activations",
                str(toy_dir / "activations.npy"),
                "--method",
                "topk",
                "--k",
                "3",
                "--n-latents",
                "32",
                "--steps",
                "20",
                "--batch-size",
                "128",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    main(
        [
            "eval",
            "--sae",
            str(out),
            "--activations",
            str(toy_dir / "activations.npy"),
            "--all-rows",
            "--json",
            "--true-dictionary",
            str(toy_dir / "dictionary.npy"),
        ]
    )
    cli = json.loads(capsys.readouterr().out)
    py = saelab.evaluate(
        out, toy_dir / "activations.npy", true_dictionary=toy_dir / "dictionary.npy", rows="all"
    ).to_dict()
    for key in ("l0", "nmse", "explained_variance", "cos_sim", "l2_ratio", "dead_fraction", "dense_fraction", "mmcs"):
        assert cli[key] == pytest.approx(py[key])


def test_l0_eps_counts_entries_above_eps_by_hand():
    x = torch.zeros(3, 2)
    z = torch.tensor([[0.5, 0.005, -0.02, 0.0], [0.0, 0.0, 0.0, 0.001], [1.0, 2.0, 3.0, 0.01]])
    acc = ReconstructionAccumulator(4, 2, eps=0.01)
    acc.add(x + torch.tensor([1.0, 0.0]) * torch.arange(3.0)[:, None], x, z)
    r = acc.result("none")
    assert r.l0 == pytest.approx((3 + 1 + 4) / 3)
    assert r.l0_eps == pytest.approx((2 + 0 + 3) / 3)  # |z| > eps, so 0.01 itself is not counted
    assert r.eps_l0 == 0.01


def test_block_bootstrap_interval_matches_the_standard_error_of_block_means():
    g = torch.Generator().manual_seed(0)
    n = 64 * 400
    x = torch.randn(n, 6, generator=g)
    x_hat = x + 0.5 * torch.randn(n, 6, generator=g)
    # L0 varies by block, so the interval must reflect between-block spread, not the per-row one.
    level = torch.repeat_interleave(torch.rand(n // 64, generator=g) * 8, 64)
    z = (torch.rand(n, 16, generator=g) < (level[:, None] / 16)).float()
    acc = ReconstructionAccumulator(16, 6)
    for chunk in torch.split(torch.arange(n), 1000):  # chunks that cut blocks in two: blocks are global rows
        acc.add(x[chunk], x_hat[chunk], z[chunk])
    r = acc.result("none")
    ci = r.ci["l0"]
    assert ci["lo"] < r.l0 < ci["hi"]
    block_means = z.sum(1).view(-1, 64).mean(1)
    se = float(block_means.std() / np.sqrt(len(block_means)))
    assert (ci["hi"] - ci["lo"]) / 2 == pytest.approx(1.96 * se, rel=0.25)
    for key in ("nmse", "mse", "explained_variance", "cos_sim", "l2_ratio", "l0_eps"):
        assert r.ci[key]["lo"] <= getattr(r, key) <= r.ci[key]["hi"], key
    assert r.ci["explained_variance"]["lo"] == pytest.approx(1 - r.ci["nmse"]["hi"], abs=1e-9)
