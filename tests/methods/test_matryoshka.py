"""Matryoshka BatchTopK: the loss is BatchTopK's plus each nested prefix's reconstruction, by hand."""

import pytest
import torch

from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.errors import ConfigError
from saelab.evals.evaluate import evaluate
from saelab.formats.folder import load_sae
from saelab.methods.matryoshka import prefix_sizes
from saelab.methods.resolve import resolve_sae
from saelab.model.sae import SparseAutoencoder
from saelab.training.objective import compute_step
from saelab.training.trainer import Trainer


def test_prefix_sizes_halve_down_from_the_full_dictionary():
    assert prefix_sizes(64, 4) == [8, 16, 32]
    assert prefix_sizes(64, 1) == []
    assert prefix_sizes(3, 4) == [1]


def test_loss_and_gradients_match_a_hand_written_objective():
    cfg = SAEConfig(
        n_latents=32,
        d_in=8,
        method="matryoshka_batchtopk",
        method_params={"k": 3, "n_prefixes": 3, "prefix_weight": 0.5},
        b_dec_init="zero",
    ).validate()
    sae = SparseAutoencoder(cfg).train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = torch.randn(16, 8, generator=g)
    out = compute_step(sae, x, alpha=0.0, dead=None)
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    ours = torch.autograd.grad(out.total, params, retain_graph=True)

    W_enc, b_enc, W_dec, b_dec = params
    pre = (x - b_dec) @ W_enc + b_enc
    flat = torch.relu(pre).flatten()
    vals, idx = flat.topk(3 * 16)
    z = torch.zeros_like(flat).scatter(0, idx, vals).view_as(pre)
    loss = ((z @ W_dec + b_dec - x) ** 2).sum(-1).mean()
    for m in (8, 16):
        loss = loss + 0.5 * ((z[:, :m] @ W_dec[:m] + b_dec - x) ** 2).sum(-1).mean()
    ref = torch.autograd.grad(loss, params)
    assert out.total.item() == pytest.approx(loss.item(), rel=1e-5)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_parameters_name_the_field():
    with pytest.raises(ConfigError) as e:
        resolve_sae(SAEConfig(n_latents=32, method="matryoshka_batchtopk", method_params={"k": 3, "n_prefixes": 0}))
    assert e.value.field == "method.n_prefixes"


@pytest.mark.slow  # 29 s in the default run (2 cores, loaded): kept out of it to hold that run under 10 minutes
def test_it_trains_and_its_first_prefix_reconstructs_better_than_plain_batchtopks(toy_dir, tmp_path):
    results = {}
    for method in ("batchtopk", "matryoshka_batchtopk"):
        cfg = SAEConfig(name=method, n_latents=64, method=method, method_params={"k": 3}, lr=3e-3).validate()
        run = RunConfig(
            TrainConfig(
                activations=str(toy_dir / "activations.npy"), steps=300, batch_size=128, out=str(tmp_path / method)
            ),
            [cfg],
        )
        Trainer(run, progress=False).fit()
        sae = load_sae(tmp_path / method)
        x = torch.from_numpy(__import__("numpy").load(toy_dir / "activations.npy")[-2000:]).float()
        with torch.no_grad():
            z = sae.encode(x)
            first = z[:, :16] @ sae.W_dec[:16] + sae.b_dec
        err = ((first - x) ** 2).sum(-1).mean() / ((x - x.mean(0)) ** 2).sum(-1).mean()
        results[method] = (evaluate(sae, str(toy_dir / "activations.npy"), rows="all").nmse, float(err))
    assert results["matryoshka_batchtopk"][0] < 0.3  # it learned to reconstruct
    # The first 16 latents alone explain more under the Matryoshka loss than under plain BatchTopK.
    assert results["matryoshka_batchtopk"][1] < results["batchtopk"][1]
