"""Progressive codes: a TopK-family SAE evaluated at other k′ (`saelab eval --k-sweep`)."""

import numpy as np
import pytest
import torch
from cli_harness import cli, error_line, strict_json

from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.errors import ConfigError
from saelab.evals.k_sweep import batch_topk_code, k_sweep, parse_ks
from saelab.formats.folder import save_sae
from saelab.model.sae import SparseAutoencoder
from saelab.training.trainer import Trainer


def _identity_sae(method: str, k: int, **params) -> SparseAutoencoder:
    """d_in = n = 4, W_enc = W_dec = I, no biases: the code is the activation of x itself."""
    sae = SparseAutoencoder(
        SAEConfig(n_latents=4, d_in=4, method=method, method_params={"k": k, **params}, b_dec_init="zero").validate()
    )
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(torch.eye(4))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


X = np.array([[3.0, 1.0, -2.0, 0.5], [0.2, 4.0, 1.0, 2.0], [1.0, 0.0, 0.0, -1.0]], dtype=np.float32)


def _nmse(x, x_hat):
    return ((x - x_hat) ** 2).sum() / ((x - x.mean(axis=0)) ** 2).sum()


def test_topk_sweep_by_hand():
    # With identity weights, top k' keeps each row's k' largest positive entries of x.
    points = k_sweep(_identity_sae("topk", 1), X, [1, 2, 4], rows="all")
    keep2 = np.array([[3.0, 1.0, 0, 0], [0, 4.0, 0, 2.0], [1.0, 0, 0, 0]])
    keep4 = np.maximum(X, 0)
    assert [(p.k, p.mode) for p in points] == [(1, "topk"), (2, "topk"), (4, "topk")]
    assert points[1].nmse == pytest.approx(_nmse(X, keep2)) and points[2].nmse == pytest.approx(_nmse(X, keep4))
    # Row 3 at k'=2 keeps 1.0 and ReLU(0) = 0, which counts as inactive: L0 = (2 + 2 + 1) / 3.
    assert points[1].l0 == pytest.approx(5 / 3) and points[2].l0 == pytest.approx((3 + 4 + 1) / 3)


def test_batchtopk_sweep_by_hand():
    sae = _identity_sae("batchtopk", 1)
    sae.activation.threshold.fill_(1.5)  # inference keeps entries above 1.5: 3.0, 4.0, 2.0
    points = k_sweep(sae, X, [2], rows="all", batch_size=3)
    modes = [(p.k, p.mode) for p in points]
    assert modes == [(1, "threshold"), (1, "batch_topk"), (2, "batch_topk")]
    thr, b1, b2 = points
    assert thr.l0 == pytest.approx(1.0) and thr.nmse == pytest.approx(_nmse(X, np.where(X > 1.5, X, 0)))
    # Batch top k·B over all 12 entries: B = 3, so k=1 keeps {4, 3, 2} and k=2 keeps {4, 3, 2, 1, 1, 1}.
    assert b1.nmse == pytest.approx(thr.nmse) and b1.batch_rows == 3
    keep6 = np.where(X >= 1.0, X, 0)
    assert b2.l0 == pytest.approx(2.0) and b2.nmse == pytest.approx(_nmse(X, keep6))


def test_batch_topk_code_keeps_the_largest_of_the_batch():
    pre = torch.tensor([[1.0, -3.0, 5.0], [2.0, 4.0, 0.5]])
    assert batch_topk_code(pre, 3).tolist() == [[0.0, 0.0, 5.0], [2.0, 4.0, 0.0]]


def test_non_topk_methods_are_refused(toy_dir, tmp_path):
    sae = SparseAutoencoder(SAEConfig(n_latents=8, d_in=16, method="relu").validate())
    with pytest.raises(ConfigError) as e:
        k_sweep(sae, toy_dir / "activations.npy", [2])
    assert e.value.field == "k_sweep" and "--k-sweep" in str(e.value)
    with pytest.raises(ConfigError):
        parse_ks("4,x")
    with pytest.raises(ConfigError):
        k_sweep(_identity_sae("topk", 1), X, [5], rows="all")  # more than n_latents


@pytest.fixture(scope="module")
def trained(toy_dir, tmp_path_factory):
    """TopK and Multi-TopK at k=3, trained together on the toy data, 400 steps."""
    out = tmp_path_factory.mktemp("progressive") / "run"
    saes = [
        SAEConfig(name="topk", n_latents=64, lr=3e-3, method="topk", method_params={"k": 3}),
        SAEConfig(name="multi", n_latents=64, lr=3e-3, method="multi_topk", method_params={"k": 3}),
    ]
    run = RunConfig(
        TrainConfig(activations=str(toy_dir / "activations.npy"), steps=400, batch_size=128, out=str(out)), saes
    )
    Trainer(run, progress=False).fit()
    return out


def test_multi_topk_holds_up_at_twice_k(trained, toy_dir):
    data = toy_dir / "activations.npy"
    topk = {p.k: p.nmse for p in k_sweep(trained / "topk", data, [3, 6])}
    multi = {p.k: p.nmse for p in k_sweep(trained / "multi", data, [3, 6])}
    # The paper: Multi-TopK's code improves with more latents; plain TopK's does not (it overshoots).
    assert multi[6] < multi[3] and multi[6] < topk[6], (topk, multi)
    assert topk[6] > 0.8 * topk[3], topk


def test_eval_k_sweep_cli(trained, toy_dir):
    data = toy_dir / "activations.npy"
    code, out, err = cli("eval", "--sae", trained / "multi", "--activations", data, "--k-sweep", "3,6", "--json")
    assert code == 0, err
    d = strict_json(out)
    assert [(p["k"], p["mode"]) for p in d["k_sweep"]] == [(3, "topk"), (6, "topk")]
    assert d["k_sweep"][0]["nmse"] == pytest.approx(d["nmse"], rel=1e-9)  # k' = k is the SAE itself
    line = error_line(cli("eval", "--sae", trained / "topk", "--activations", data, "--k-sweep", "3", "--k", "4"))
    assert "k_sweep" in line
    relu = trained.parent / "relu"
    save_sae(SparseAutoencoder(SAEConfig(n_latents=8, d_in=16, method="relu").validate()), relu, {})
    line = error_line(cli("eval", "--sae", relu, "--activations", data, "--k-sweep", "2,4"))
    assert "--k-sweep needs a TopK-family SAE" in line
