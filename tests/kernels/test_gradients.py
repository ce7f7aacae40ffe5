"""The objective's gradients equal a plain-autograd reference written from the formulas."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saelab.config import SAEConfig
from saelab.model.sae import SparseAutoencoder
from saelab.training.objective import compute_step


def _sae(method, params, n=48, d=12, **kw):
    cfg = SAEConfig(n_latents=n, method=method, method_params=params, d_in=d, b_dec_init="zero", **kw)
    sae = SparseAutoencoder(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return sae


def _topk_code(pre, k):
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))


def _reference_loss(W_enc, b_enc, W_dec, b_dec, x, k, dead=None, k_aux=0, aux_coef=0.0, multi=None):
    pre = (x - b_dec) @ W_enc + b_enc
    x_hat = _topk_code(pre, k) @ W_dec + b_dec
    loss = ((x_hat - x) ** 2).sum(-1).mean()
    if multi is not None:
        mult, weight = multi
        x_big = _topk_code(pre, k * mult) @ W_dec + b_dec
        loss = loss + weight * ((x_big - x) ** 2).sum(-1).mean()
    if dead is not None and dead.any():
        e = (x - x_hat).detach()
        dead_pre = pre.masked_fill(~dead, float("-inf"))
        e_hat = _topk_code(dead_pre, min(k_aux, int(dead.sum()))) @ W_dec
        aux = ((e_hat - e) ** 2).sum(-1).mean() / ((e - e.mean(0)) ** 2).sum(-1).mean()
        # The paper's NMSE(aux, e) on the raw-squared-error scale of the reconstruction term: × var(x).
        var_x = ((x - x.mean(0)) ** 2).sum(-1).mean()
        loss = loss + aux_coef * aux * var_x
    return loss


def _grads(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)


@pytest.mark.parametrize("method,params,multi", [("topk", {"k": 4}, None), ("multi_topk", {"k": 3}, (4, 0.125))])
def test_auxk_and_multi_topk_gradients_match_autograd_and_reach_the_encoder(method, params, multi):
    torch.manual_seed(0)
    sae = _sae(method, params, auxk=True, k_aux=6, aux_coef=1 / 32)
    x = torch.randn(32, 12)
    dead = torch.zeros(48, dtype=torch.bool)
    dead[::3] = True
    out = compute_step(sae, x, alpha=0.0, dead=dead)
    names = ["W_enc", "b_enc", "W_dec", "b_dec"]
    params_ = [getattr(sae, n) for n in names]
    ours = _grads(out.total, params_)
    ref = _grads(_reference_loss(*params_, x, params["k"], dead, 6, 1 / 32, multi), params_)
    for name, a, b in zip(names, ours, ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    # The auxiliary terms on their own must move the encoder and b_dec (a fused path elsewhere drops them).
    for term in ["auxk"] + (["multi_topk"] if multi else []):
        g_enc, g_benc, g_bdec = _grads(out.losses[term], [sae.W_enc, sae.b_enc, sae.b_dec])
        assert g_enc is not None and g_enc.abs().sum() > 0, term
        assert g_benc.abs().sum() > 0, term
        assert g_bdec is not None and g_bdec.abs().sum() > 0, term


def test_total_over_batch_variance_is_the_scaling_papers_objective():
    """L/var(x) = NMSE(x̂, x) + c·NMSE(ê, e): the paper's ratio between the two terms, under any input scale."""
    for scale in (0.01, 1.0, 30.0):
        torch.manual_seed(1)
        sae = _sae("topk", {"k": 4}, auxk=True, k_aux=6, aux_coef=1 / 32)
        x = torch.randn(64, 12) * scale
        with torch.no_grad():
            sae.b_dec.mul_(scale)
            sae.W_dec.mul_(scale)
            sae.W_enc.div_(scale)
        dead = torch.zeros(48, dtype=torch.bool)
        dead[1::4] = True
        out = compute_step(sae, x, alpha=0.0, dead=dead)
        with torch.no_grad():
            pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
            x_hat = _topk_code(pre, 4) @ sae.W_dec + sae.b_dec
            e = x - x_hat
            e_hat = _topk_code(pre.masked_fill(~dead, float("-inf")), 6) @ sae.W_dec
            var = lambda v: ((v - v.mean(0)) ** 2).sum(-1).mean()
            nmse = ((x_hat - x) ** 2).sum(-1).mean() / var(x)
            nmse_aux = ((e_hat - e) ** 2).sum(-1).mean() / var(e)
        assert torch.allclose(out.total.detach() / var(x), nmse + nmse_aux / 32, rtol=1e-4), scale


def test_auxk_only_touches_dead_latents_in_the_encoder():
    sae = _sae("topk", {"k": 4}, auxk=True, k_aux=4)
    x = torch.randn(16, 12)
    dead = torch.zeros(48, dtype=torch.bool)
    dead[:10] = True
    out = compute_step(sae, x, alpha=0.0, dead=dead)
    (g,) = _grads(out.losses["auxk"], [sae.W_enc])
    assert g[:, ~dead].abs().sum() == 0
    assert g[:, dead].abs().sum() > 0


def test_penalty_with_decoder_norm_weighting_matches_autograd():
    sae = _sae("relu", {}, penalty="l1", alpha=0.3, penalty_decoder_norm=True, decoder_unit_norm=False)
    x = torch.randn(20, 12)
    out = compute_step(sae, x, alpha=0.3, dead=None)
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    pre = (x - b_dec) @ W_enc + b_enc
    z = torch.relu(pre)
    ref = ((z @ W_dec + b_dec - x) ** 2).sum(-1).mean() + 0.3 * (z * W_dec.norm(dim=-1)).sum(-1).mean()
    for a, b in zip(_grads(out.total, [W_enc, W_dec]), _grads(ref, [W_enc, W_dec])):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_unit_norm_projection_removes_the_radial_gradient():
    sae = _sae("topk", {"k": 4})
    sae.normalize_decoder()
    x = torch.randn(16, 12)
    compute_step(sae, x, 0.0, None).total.backward()
    sae.project_decoder_grad()
    radial = (sae.W_dec.grad * sae.W_dec).sum(-1)
    assert radial.abs().max() < 1e-5


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 9), d=st.integers(1, 6), n=st.integers(1, 10), seed=st.integers(0, 2**16), x_grad=st.booleans()
)
def test_pre_activations_equal_the_plain_formula_in_value_and_every_gradient(rows, d, n, seed, x_grad):
    # pre_activations routes b_dec's gradient around the [B, n]·[n, d] product; nothing else may change.
    sae = SparseAutoencoder(SAEConfig(n_latents=n, method="relu", d_in=d, b_dec_init="zero"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 2)
    x = torch.randn(rows, d, generator=g).requires_grad_(x_grad)
    weight = torch.randn(rows, n, generator=g)  # a loss whose gradient reaches every entry of pre
    params = [sae.W_enc, sae.b_enc, sae.b_dec] + ([x] if x_grad else [])
    pre = sae.pre_activations(x)
    plain = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    assert torch.equal(pre, plain)
    for a, b in zip(_grads((pre * weight).sum(), params), _grads((plain * weight).sum(), params)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(sae.pre_activations(x), plain)
