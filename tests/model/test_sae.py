"""The model: initialization, normalization, and the saved folder round trip."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import saelab
from saelab.config import SAEConfig
from saelab.formats.folder import save_sae
from saelab.model.initialization import geometric_median
from saelab.model.normalize import Normalizer
from saelab.model.sae import SparseAutoencoder


def test_init_follows_the_scaling_paper():
    cfg = SAEConfig(n_latents=40, method="topk", method_params={"k": 4}, d_in=10, b_dec_init="mean")
    sae = SparseAutoencoder(cfg)
    sample = torch.randn(500, 10) + 3.0
    sae.initialize_from_data(sample, torch.Generator().manual_seed(0))
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(40), atol=1e-6)
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert torch.allclose(sae.b_dec, sample.mean(0), atol=1e-5)
    assert not sae.W_enc.data_ptr() == sae.W_dec.data_ptr()  # untied after init


def test_geometric_median_minimizes_the_sum_of_distances():
    torch.manual_seed(0)
    pts = torch.cat([torch.randn(200, 3), torch.randn(20, 3) * 50 + 100])  # outliers pull the mean away
    gm = geometric_median(pts)
    cost = lambda y: (pts - y).norm(dim=-1).sum()
    for _ in range(50):
        assert cost(gm) <= cost(gm + torch.randn(3) * 0.05) + 1e-6
    assert gm.norm() < 2.0 and pts.mean(0).norm() > 10


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 30), st.floats(0.01, 100))
def test_unit_normalization_centres_and_scales_each_token(d, scale):
    x = torch.randn(8, d, dtype=torch.float64) * scale + 5
    norm = Normalizer("unit")
    x_n, ctx = norm.normalize(x)
    assert torch.allclose(x_n.mean(-1), torch.zeros(8, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(x_n.norm(dim=-1), torch.ones(8, dtype=torch.float64))
    assert torch.allclose(norm.denormalize(x_n, ctx), x)


def test_scalar_normalization_sets_mean_norm_to_sqrt_d():
    x = torch.randn(1000, 25) * 7
    norm = Normalizer("scalar")
    norm.fit(x)
    x_n, _ = norm.normalize(x)
    assert x_n.norm(dim=-1).mean().item() == pytest.approx(5.0, rel=1e-5)


@pytest.mark.parametrize("normalize", ["none", "scalar", "unit"])
@pytest.mark.parametrize(
    "method,params", [("relu", {}), ("topk", {"k": 3}), ("batchtopk", {"k": 3}), ("jumprelu", {}), ("dimred", {})]
)
def test_saved_folder_loads_to_the_same_function(tmp_path, normalize, method, params):
    cfg = SAEConfig(n_latents=20, method=method, method_params=params, d_in=8, normalize=normalize)
    sae = SparseAutoencoder(cfg)
    sample = torch.randn(300, 8) * 3 + 1
    sae.initialize_from_data(sample, torch.Generator().manual_seed(1))
    with torch.no_grad():
        sae.b_enc.add_(0.1)
    if method == "batchtopk":
        sae.train()
        pre = sae.pre_activations(sae.normalizer.normalize(sample)[0])
        sae.activation.observe(sae.activation(pre))
    sae.eval()
    save_sae(sae, tmp_path / "sae")
    loaded = saelab.load(tmp_path / "sae")
    x = torch.randn(50, 8) * 3 + 1
    assert torch.allclose(loaded.forward(x), sae.forward(x), atol=1e-5)
    assert torch.allclose(loaded.encode(x), sae.encode(x), atol=1e-5)
    cfg_json = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg_json["d_in"] == 8 and cfg_json["d_sae"] == 20


def test_saelens_weights_act_on_raw_inputs_with_a_scalar_factor_folded_in(tmp_path):
    from safetensors.torch import load_file

    cfg = SAEConfig(n_latents=16, method="relu", d_in=6, normalize="scalar")
    sae = SparseAutoencoder(cfg)
    sae.initialize_from_data(torch.randn(400, 6) * 20, torch.Generator().manual_seed(2))
    save_sae(sae, tmp_path / "s")
    w = load_file(str(tmp_path / "s" / "sae_weights.safetensors"))
    assert set(w) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    assert w["W_enc"].shape == (6, 16) and w["W_dec"].shape == (16, 6)
    x = torch.randn(30, 6) * 20
    z = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    assert torch.allclose(z, sae.encode(x), atol=1e-5)
    assert torch.allclose(z @ w["W_dec"] + w["b_dec"], sae.forward(x), atol=1e-4)


def test_load_reports_a_broken_folder(tmp_path):
    from saelab.errors import DataError

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "saelab.json").write_text("{not json")
    with pytest.raises(DataError, match="saelab.json"):
        saelab.load(tmp_path / "bad")
    with pytest.raises(DataError, match="not a folder"):
        saelab.load(tmp_path / "missing")
