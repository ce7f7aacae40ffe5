"""Shrinkage refinement: the best non-negative activations on the encoder's active set, decoder fixed."""

import json

import numpy as np
import pytest
import torch
from cli_harness import cli, strict_json
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls

from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.errors import ConfigError, DataError
from saelab.evals.evaluate import evaluate
from saelab.evals.refine import RefineConfig, refine, refine_active, refine_batches
from saelab.model.sae import SparseAutoencoder
from saelab.training.trainer import Trainer


def test_identity_decoder_by_hand():
    # Decoder rows e0, e1, e2; target (2, -1, 0.5); active set {0, 1}: the best z ≥ 0 is (2, 0, 0) —
    # e1's coefficient would have to be −1, so it is clipped, and e2 is not in the set.
    W = torch.eye(3)
    z = torch.tensor([[0.7, 0.3, 0.0]])
    refined, stats = refine_active(W, torch.tensor([[2.0, -1.0, 0.5]]), z)
    assert refined[0].tolist() == pytest.approx([2.0, 0.0, 0.0], abs=1e-9)
    assert stats.max_residual <= 1e-6


def test_orthonormal_rows_give_the_clipped_projection():
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    W = q[:8]  # 8 orthonormal decoder rows in 12 dims
    target = torch.randn(50, 12, generator=g, dtype=torch.float64)
    z = torch.relu(torch.randn(50, 8, generator=g, dtype=torch.float64)) * (torch.rand(50, 8, generator=g) < 0.6)
    refined, _ = refine_active(W, target, z)
    expected = (target @ W.T).clamp_min(0.0) * (z > 0)
    assert torch.allclose(refined, expected, atol=1e-8)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 24), d=st.integers(2, 12), p=st.floats(0.1, 0.9))
def test_matches_exact_nnls(seed, n, d, p):
    g = torch.Generator().manual_seed(seed)
    W = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    target = torch.randn(6, d, generator=g, dtype=torch.float64)
    z = torch.rand(6, n, generator=g, dtype=torch.float64) * (torch.rand(6, n, generator=g) < p)
    # At most d active rows per token: there the problem is strictly convex and FISTA's convergence is
    # guaranteed within the cap. With more active rows than dimensions the minimizer is degenerate and
    # the solver can stop at the cap unconverged (it reports refine_converged = false; README, Evaluation).
    for i in range(6):
        support = (z[i] > 0).nonzero().flatten()
        z[i, support[d:]] = 0
    refined, stats = refine_active(W, target, z, tol=1e-9, max_iter=20_000)
    assert stats.max_residual <= 1e-9
    assert (refined >= 0).all() and (refined[z == 0] == 0).all()
    for i in range(6):
        support = (z[i] > 0).nonzero().flatten()
        if len(support) == 0:
            continue
        A = W[support].numpy().T
        exact, _ = nnls(A, target[i].numpy())
        ours = refined[i, support].numpy()
        # The minimizer need not be unique (more active rows than dimensions); the minimum is.
        loss = lambda c: 0.5 * np.sum((target[i].numpy() - A @ c) ** 2)
        assert loss(ours) == pytest.approx(loss(exact), rel=1e-7, abs=1e-10)
        if len(support) <= d:
            assert np.allclose(ours, exact, atol=1e-5)


def test_negative_codes_are_refused():
    with pytest.raises(DataError):
        refine_active(torch.eye(2), torch.ones(1, 2), torch.tensor([[-0.5, 1.0]]))


def test_bad_config_names_the_field():
    with pytest.raises(ConfigError) as e:
        RefineConfig(tol=0.0).validate()
    assert e.value.field == "refine.tol"


def test_result_does_not_depend_on_batching():
    cfg = SAEConfig(n_latents=24, method="relu", d_in=8).validate()
    sae = SparseAutoencoder(cfg)
    x = torch.randn(90, 8, generator=torch.Generator().manual_seed(1))
    whole = refine_batches(sae, [x]).to_dict()
    parts = refine_batches(sae, [x[:7], x[7:50], x[50:]]).to_dict()
    for key in ("refine_nmse_before", "refine_nmse_after", "refine_scale", "refine_scale_sum", "refine_active_entries"):
        # Each chunk iterates until its own tokens meet the tolerance: equal to that accuracy.
        assert parts[key] == pytest.approx(whole[key], rel=1e-6)


# ---- the paper's finding, on toy data with a known dictionary ----------------------------------


@pytest.fixture(scope="module")
def trained(toy_dir, tmp_path_factory):
    """ReLU+L1 (sizeable alpha) and TopK trained together on the toy data, 400 steps."""
    out = tmp_path_factory.mktemp("refine") / "run"
    saes = [
        SAEConfig(name="l1", n_latents=64, lr=3e-3, method="relu", penalty="l1", alpha=0.3),
        SAEConfig(name="topk", n_latents=64, lr=3e-3, method="topk", method_params={"k": 3}),
    ]
    run = RunConfig(
        TrainConfig(activations=str(toy_dir / "activations.npy"), steps=400, batch_size=128, out=str(out)), saes
    )
    Trainer(run, progress=False).fit()
    return out


def test_l1_shrinks_and_topk_does_not(trained, toy_dir):
    data = toy_dir / "activations.npy"
    l1, topk = refine(trained / "l1", data), refine(trained / "topk", data)
    for r in (l1, topk):
        assert r.refine_converged and r.refine_rows == "held-out"
        assert r.refine_nmse_after <= r.refine_nmse_before
    # The paper: refinement raises ReLU+L1 activations on average, not TopK's, and moves TopK far less.
    assert l1.refine_scale > 1.05 and l1.refine_scale_sum > 1.05, l1
    assert abs(topk.refine_scale - 1.0) < 0.1, topk
    assert l1.refine_scale - 1.0 > 3 * abs(topk.refine_scale - 1.0)
    # With the encoder's activations, refinement reports exactly evaluate's NMSE on the same rows.
    assert l1.refine_nmse_before == pytest.approx(evaluate(trained / "l1", data).nmse, rel=1e-9)


def test_eval_refine_cli(trained, toy_dir):
    code, out, err = cli(
        "eval", "--sae", trained / "l1", "--activations", toy_dir / "activations.npy", "--refine", "--json"
    )
    assert code == 0, err
    d = strict_json(out)
    assert d["refine_nmse_before"] == pytest.approx(d["nmse"], rel=1e-9)
    assert d["refine_nmse_after"] < d["refine_nmse_before"] and d["refine_scale"] > 1.05
    code, text, _ = cli("eval", "--sae", trained / "l1", "--activations", toy_dir / "activations.npy", "--refine")
    assert code == 0 and "refine_scale" in text and "converged" in text
    json.dumps(d)  # plain JSON all through
