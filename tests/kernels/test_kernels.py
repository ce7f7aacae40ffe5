"""The sparse TopK-family kernels compute exactly what the dense reference path computes."""

import math
import random

import pytest
import torch

from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.errors import ConfigError
from saelab.kernels import select, sparse_step, topk_encode, workspace
from saelab.kernels.sparse_code import SparseCode
from saelab.methods import supports
from saelab.model.sae import SparseAutoencoder
from saelab.training.objective import (
    active_per_row,
    compute_step,
    dense_step,
    fired_latents,
    nonzero_values,
    uses_sparse_kernel,
)
from saelab.training.trainer import Trainer

NAMES = ["W_enc", "b_enc", "W_dec", "b_dec"]


def _sae(method, params, n, d, seed=3, **kw):
    cfg = SAEConfig(n_latents=n, method=method, method_params=params, d_in=d, b_dec_init="zero", **kw)
    sae = SparseAutoencoder(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    sae.train()
    return sae


def _grads(loss, sae, names=NAMES):
    params = [getattr(sae, n) for n in names]
    return dict(zip(names, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)))


def _close(a, b, what):
    if a is None or b is None:
        assert a is None and b is None, what
        return
    scale = max(1.0, float(b.abs().max()))
    assert torch.allclose(a, b, rtol=1e-5, atol=2e-6 * scale), f"{what}: max diff {float((a - b).abs().max())}"


def _compare(sae, x, dead):
    dense, sparse = dense_step(sae, x, 0.0, dead), sparse_step(sae, x, 0.0, dead)
    assert list(sparse.losses) == list(dense.losses)
    for name in dense.losses:
        _close(sparse.losses[name].detach(), dense.losses[name].detach(), f"loss {name}")
    gd, gs = _grads(dense.total, sae), _grads(sparse.total, sae)
    for name in NAMES:
        _close(gs[name], gd[name], f"grad {name}")
    _close(sparse.x_hat.detach(), dense.x_hat.detach(), "x_hat")
    return dense, sparse


def _cases():
    """Random shapes for every covered method, with and without AuxK (seeded, so reproducible)."""
    rng = random.Random(1234)
    methods = [("topk", {}), ("batchtopk", {}), ("multi_topk", {"multiple": 4}), ("leaky_topk", {"eps": 0.0})]
    cases = []
    for i in range(16):
        method, extra = methods[i % len(methods)]
        n = rng.choice([48, 96, 256, 512, 1000])
        d = rng.choice([8, 12, 24])
        k = rng.choice([1, 2, 3, 5]) if method != "multi_topk" else rng.choice([1, 2, 3])
        batch = rng.choice([7, 32, 64])
        auxk = i % 3 != 0
        normalize = rng.choice(["none", "unit", "scalar"])
        dead_share = rng.choice([0.02, 0.3, 0.7, 1.0])
        cases.append((method, {"k": k, **extra}, n, d, batch, auxk, rng.choice([2, 6, 40]), normalize, dead_share, i))
    return cases


@pytest.mark.parametrize("method,params,n,d,batch,auxk,k_aux,normalize,dead_share,seed", _cases())
def test_sparse_step_matches_the_dense_path(method, params, n, d, batch, auxk, k_aux, normalize, dead_share, seed):
    sae = _sae(method, params, n, d, seed=seed, auxk=auxk, k_aux=k_aux, normalize=normalize, normalization_factor=0.7)
    assert supports(sae)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d, generator=g) * 2 + 0.3
    dead = torch.rand(n, generator=g) < dead_share if auxk else None
    dense, sparse = _compare(sae, x, dead)
    # The code object answers the trainer's questions as the dense code does.
    assert torch.equal(fired_latents(sparse.z, n), fired_latents(dense.z, n))
    assert torch.equal(active_per_row(sparse.z), active_per_row(dense.z))
    assert torch.equal(nonzero_values(sparse.z).detach().sort().values, nonzero_values(dense.z).detach().sort().values)
    assert torch.allclose(sparse.z.to_dense(n).detach(), dense.z.detach())


@pytest.mark.parametrize("density", [0.0, math.inf])
@pytest.mark.parametrize("method,params", [("topk", {"k": 3}), ("multi_topk", {"k": 2}), ("batchtopk", {"k": 3})])
def test_both_auxk_layouts_match_the_dense_path(monkeypatch, density, method, params):
    # density 0: AuxK always as a dense block over the dead latents; inf: always as listed entries.
    monkeypatch.setattr(topk_encode, "AUX_BLOCK_DENSITY", density)
    sae = _sae(method, params, n=640, d=16, auxk=True, k_aux=7)
    x = torch.randn(40, 16)
    dead = torch.rand(640) < 0.5
    _compare(sae, x, dead)


def _topk_code(pre, k):
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))


def _autograd_reference(W_enc, b_enc, W_dec, b_dec, x, k, dead, k_aux, aux_coef, multi=None):
    """The TopK objective written from the formulas with plain autograd (as test_gradients does)."""
    pre = (x - b_dec) @ W_enc + b_enc
    x_hat = _topk_code(pre, k) @ W_dec + b_dec
    loss = ((x_hat - x) ** 2).sum(-1).mean()
    if multi is not None:
        x_big = _topk_code(pre, k * multi[0]) @ W_dec + b_dec
        loss = loss + multi[1] * ((x_big - x) ** 2).sum(-1).mean()
    e = (x - x_hat).detach()
    e_hat = _topk_code(pre.masked_fill(~dead, float("-inf")), min(k_aux, int(dead.sum()))) @ W_dec
    var_x = ((x - x.mean(0)) ** 2).sum(-1).mean()  # AuxK sits on the raw-squared-error scale: × var(x)
    return loss + aux_coef * var_x * ((e_hat - e) ** 2).sum(-1).mean() / ((e - e.mean(0)) ** 2).sum(-1).mean()


@pytest.mark.parametrize("method,params,multi", [("topk", {"k": 4}, None), ("multi_topk", {"k": 3}, (4, 0.125))])
def test_auxk_and_multi_topk_reach_the_encoder_and_b_dec_as_plain_autograd_does(method, params, multi):
    sae = _sae(method, params, n=512, d=12, auxk=True, k_aux=6, aux_coef=1 / 32)
    x = torch.randn(32, 12)
    dead = torch.zeros(512, dtype=torch.bool)
    dead[::3] = True
    out = sparse_step(sae, x, 0.0, dead)
    params_ = [getattr(sae, n) for n in NAMES]
    ref = _autograd_reference(*params_, x, params["k"], dead, 6, 1 / 32, multi)
    ours, theirs = _grads(out.total, sae), dict(zip(NAMES, torch.autograd.grad(ref, params_)))
    for name in NAMES:
        _close(ours[name], theirs[name], name)
    for term in ["auxk"] + (["multi_topk"] if multi else []):
        g = _grads(out.losses[term], sae, ["W_enc", "b_enc", "b_dec"])
        assert all(v is not None and v.abs().sum() > 0 for v in g.values()), term
    # AuxK's encoder gradient lives on the dead latents' columns only.
    g_enc = _grads(out.losses["auxk"], sae, ["W_enc"])["W_enc"]
    assert g_enc[:, ~dead].abs().sum() == 0


@pytest.mark.parametrize("n_prefixes,weight", [(1, 1.0), (2, 1.0), (4, 0.5), (6, 1.0), (4, 0.0)])
@pytest.mark.parametrize("auxk", [False, True])
def test_matryoshka_prefix_losses_match_the_dense_path(n_prefixes, weight, auxk):
    n = 200  # prefixes 100, 50, 25, 12, 6: not powers of two all the way down
    sae = _sae(
        "matryoshka_batchtopk",
        {"k": 4, "n_prefixes": n_prefixes, "prefix_weight": weight},
        n=n,
        d=12,
        seed=7,
        auxk=auxk,
        k_aux=6,
        normalize="scalar",
        normalization_factor=0.7,
    )
    assert supports(sae)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 12, generator=g) * 2 + 0.3
    dead = torch.rand(n, generator=g) < 0.3 if auxk else None
    dense, sparse = _compare(sae, x, dead)
    with_prefixes = n_prefixes > 1 and weight > 0
    assert list(sparse.losses) == ["mse"] + (["matryoshka"] if with_prefixes else []) + (["auxk"] if auxk else [])
    if with_prefixes:  # the prefix term is not a copy of the full reconstruction's
        assert float(sparse.losses["matryoshka"].detach()) > weight * float(sparse.losses["mse"].detach()) * 0.5
    sae.eval()
    assert not supports(sae)  # inference is BatchTopK's threshold, a dense activation


def test_batchtopk_rows_are_ragged_and_match_the_flat_selection():
    sae = _sae("batchtopk", {"k": 3}, n=256, d=12)
    x = torch.randn(24, 12)
    x[0] *= 30  # one loud row takes far more than k of the batch's k·B entries
    dense, sparse = _compare(sae, x, None)
    per_row = active_per_row(sparse.z)
    assert per_row[0] > 6 and per_row.sum() <= 3 * 24 and len(set(per_row.tolist())) > 1


@pytest.mark.parametrize("n,k", [(4096, 32), (1024, 7), (640, 20), (100, 3), (48, 48)])
def test_row_topk_returns_torch_topk_values(n, k):
    mat = torch.randn(37, n)
    mat[3, :] = 0.5  # a row of ties
    values, cols = select.row_topk(mat, k, sorted=True)
    assert torch.equal(values, torch.topk(mat, k, dim=1).values)
    assert torch.equal(mat.gather(1, cols), values)
    assert all(len(set(r.tolist())) == k for r in cols)


def test_batch_topk_handles_saturated_rows_and_too_few_positives():
    pre = torch.randn(16, 512)
    pre[2] += 10  # saturates its 2k candidates
    rows, cols, vals = select.batch_topk(pre, 4)
    flat = torch.relu(pre).flatten()
    assert torch.equal(vals.sort().values, flat.topk(64).values.sort().values)
    assert torch.equal(pre[rows, cols], vals)
    few = -torch.rand(8, 64)
    few[0, 5] = 1.0
    rows, cols, vals = select.batch_topk(few, 4)
    assert rows.tolist() == [0] and cols.tolist() == [5]


def test_leaky_topk_with_a_leak_keeps_the_dense_path():
    sae = _sae("leaky_topk", {"k": 3, "eps": 0.01}, n=64, d=8)
    assert not supports(sae)
    sae.cfg.kernel = "auto"
    assert isinstance(compute_step(sae, torch.randn(4, 8), 0.0, None).z, torch.Tensor)
    sae.cfg.kernel = "sparse"
    with pytest.raises(ConfigError):
        compute_step(sae, torch.randn(4, 8), 0.0, None)


@pytest.mark.parametrize(
    "penalty,penalty_params,decoder_norm",
    [
        (None, {}, False),
        ("l1", {}, False),
        ("l1", {}, True),
        ("lp", {"p": 0.5}, True),
        ("lp", {"p": 1.7, "c": 0.3}, False),
        ("smoothed_l0", {"eps": 0.05, "delta": 0.8}, True),
        ("freshman", {"p": 2.0}, False),
        ("freshman", {"p": 1.5}, True),
    ],
)
@pytest.mark.parametrize("auxk", [False, True])
def test_relu_with_an_entrywise_penalty_matches_the_dense_path(penalty, penalty_params, decoder_norm, auxk):
    kw = (
        {"penalty": penalty, "penalty_params": penalty_params, "alpha": 0.7, "penalty_decoder_norm": decoder_norm}
        if penalty
        else {}
    )
    sae = _sae("relu", {}, n=200, d=12, seed=5, auxk=auxk, k_aux=6, normalize="scalar", normalization_factor=0.7, **kw)
    assert supports(sae)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.b_enc.sub_(2.0)  # a sparse code, as training makes it: about a tenth of the entries positive
    x = torch.randn(48, 12, generator=g)
    dead = torch.rand(200, generator=g) < 0.3 if auxk else None
    dense, sparse = dense_step(sae, x, 0.7, dead), sparse_step(sae, x, 0.7, dead)
    assert (
        list(sparse.losses)
        == list(dense.losses)
        == ["mse"] + (["penalty"] if penalty else []) + (["auxk"] if auxk else [])
    )
    for name in dense.losses:
        _close(sparse.losses[name].detach(), dense.losses[name].detach(), f"loss {name}")
    gd, gs = _grads(dense.total, sae), _grads(sparse.total, sae)
    for name in NAMES:
        _close(gs[name], gd[name], f"grad {name}")
    assert torch.allclose(sparse.z.to_dense(200).detach(), dense.z.detach())
    assert torch.equal(active_per_row(sparse.z), active_per_row(dense.z))
    assert 0 < sparse.z.nnz < 0.5 * 48 * 200 and bool(
        (sparse.z.values > 0).all()
    )  # the positive entries, no stored zeros


def test_a_dense_relu_code_takes_the_dense_path_for_that_step():
    sae = _sae("relu", {}, n=64, d=8, penalty="l1", alpha=0.1)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    share = float((dense_step(sae, x, 0.1, None).z > 0).float().mean())
    assert 0.2 < share < 0.8  # random weights: a dense code
    assert sparse_step(sae, x, 0.1, None, max_density=share + 0.01) is not None
    assert sparse_step(sae, x, 0.1, None, max_density=share - 0.01) is None
    assert isinstance(compute_step(sae, x, 0.1, None).z, torch.Tensor)  # kernel auto's threshold: dense here
    sae.cfg.kernel = "sparse"
    assert isinstance(compute_step(sae, x, 0.1, None).z, SparseCode)  # asked for: the kernels whatever the density
    sae.cfg.kernel = "auto"
    with torch.no_grad():
        sae.b_enc.fill_(-6.0)
    assert isinstance(compute_step(sae, x, 0.1, None).z, SparseCode)


def test_unsupported_settings_are_refused():
    assert not supports(_sae("relu", {}, n=32, d=8, penalty="without_topk", alpha=0.1))  # a per-row top-k of the code
    assert not supports(_sae("topk", {"k": 2}, n=32, d=8, penalty="l1", alpha=0.1))  # a TopK code may store zeros
    sae = _sae("batchtopk", {"k": 2}, n=32, d=8)
    sae.eval()
    assert not supports(sae)  # inference is a threshold, not a selection


def test_input_gradient_and_column_major_encoder_match():
    sae = _sae("topk", {"k": 3}, n=256, d=12, auxk=True, k_aux=5)
    x = torch.randn(20, 12, requires_grad=True)
    dead = torch.rand(256) < 0.4
    gx_sparse = torch.autograd.grad(sparse_step(sae, x, 0.0, dead).total, x)[0]
    gx_dense = torch.autograd.grad(dense_step(sae, x, 0.0, dead).total, x)[0]
    _close(gx_sparse, gx_dense, "x")
    dense = _grads(dense_step(sae, x.detach(), 0.0, dead).total, sae)
    with torch.no_grad():  # the same weights stored transposed
        sae.W_enc.data = sae.W_enc.data.t().contiguous().t()
    assert sae.W_enc.stride(0) == 1
    sparse = _grads(sparse_step(sae, x.detach(), 0.0, dead).total, sae)
    for name in NAMES:
        _close(sparse[name], dense[name], name)


def test_a_kept_gradient_is_never_overwritten_by_the_next_step():
    sae = _sae("topk", {"k": 3}, n=128, d=8)
    sparse_step(sae, torch.randn(16, 8), 0.0, None).total.backward()
    kept = sae.W_enc.grad
    snapshot = kept.clone()
    sae.W_enc.grad = None
    sparse_step(sae, torch.randn(16, 8), 0.0, None).total.backward()
    assert torch.equal(kept, snapshot)
    first = sae.W_enc.grad.data_ptr()
    sae.W_enc.grad = None  # dropped, as zero_grad(set_to_none=True) does: its memory is reused
    sparse_step(sae, torch.randn(16, 8), 0.0, None).total.backward()
    assert sae.W_enc.grad.data_ptr() == first
    part = sae.W_enc.grad[:2]  # a slice keeps the gradient's memory as much as the gradient does
    snapshot = part.clone()
    sae.W_enc.grad = None
    sparse_step(sae, torch.randn(16, 8), 0.0, None).total.backward()
    assert torch.equal(part, snapshot)
    (returned,) = torch.autograd.grad(sparse_step(sae, torch.randn(16, 8), 0.0, None).total, [sae.W_enc])
    snapshot = returned.clone()  # handed to the caller, not to .grad: never known to be gone, never reused
    sparse_step(sae, torch.randn(16, 8), 0.0, None).total.backward()
    assert torch.equal(returned, snapshot)
    workspace.release()


def test_sparse_code_reports_like_a_dense_code():
    latents = torch.tensor([[1, 4], [2, 4], [0, 3]])
    values = torch.tensor([[0.5, 0.0], [1.5, 2.0], [0.0, 0.0]])
    code = SparseCode.fixed_width(latents, values)
    dense = code.to_dense(6)
    assert torch.equal(code.fired_latents(6), fired_latents(dense, 6))
    assert torch.equal(code.active_per_row(), active_per_row(dense))
    assert sorted(code.nonzero_values().tolist()) == sorted(nonzero_values(dense).tolist())
    ragged = SparseCode(3, torch.tensor([4, 0, 2]), torch.tensor([1.0, 2.0, 3.0]), rows=torch.tensor([0, 0, 2]))
    assert ragged.active_per_row().tolist() == [2, 0, 1] and ragged.crow.tolist() == [0, 2, 2, 3]


def test_training_with_the_sparse_kernel_gives_the_dense_weights(toy_dir, tmp_path):
    saes = [
        dict(name="a", n_latents=64, method="topk", method_params={"k": 3}, auxk=True, k_aux=8, dead_tokens=256),
        dict(
            name="b",
            n_latents=48,
            method="multi_topk",
            method_params={"k": 2},
            auxk=True,
            k_aux=6,
            dead_tokens=256,
            normalize="unit",
        ),
        dict(name="c", n_latents=40, method="batchtopk", method_params={"k": 3}, auxk=True, k_aux=8, dead_tokens=256),
        dict(name="d", n_latents=32, method="leaky_topk", method_params={"k": 2, "eps": 0.0}, normalize="scalar"),
        dict(
            name="e",
            n_latents=64,
            method="matryoshka_batchtopk",
            method_params={"k": 3},
            auxk=True,
            k_aux=8,
            dead_tokens=256,
        ),
    ]
    weights = {}
    for kernel in ("dense", "sparse"):
        t = TrainConfig(
            activations=str(toy_dir / "activations.npy"),
            out=str(tmp_path / kernel),
            batch_size=128,
            log_every=10,
            steps=25,
        )
        members = Trainer(RunConfig(t, [SAEConfig(lr=2e-3, kernel=kernel, **s) for s in saes]), progress=False).fit()
        weights[kernel] = {m.cfg.name: {n: getattr(m.sae, n).detach().clone() for n in NAMES} for m in members}
        weights[kernel]["threshold"] = members[2].sae.activation.threshold.clone()
    for name in "abcde":
        for p in NAMES:
            assert torch.allclose(weights["sparse"][name][p], weights["dense"][name][p], rtol=1e-4, atol=1e-5), (
                name,
                p,
            )
    assert torch.allclose(weights["sparse"]["threshold"], weights["dense"]["threshold"], rtol=1e-5)


@pytest.mark.parametrize("method,params", [("topk", {"k": 3}), ("multi_topk", {"k": 2})])
@pytest.mark.parametrize("budget_rows", [1, 7, 16])
def test_row_chunked_pre_activations_match_the_dense_path(monkeypatch, method, params, budget_rows):
    # P computed a few rows at a time (the budget that bounds a huge dictionary's temporary) selects
    # the same codes and gives the same losses and gradients as the dense path, AuxK included.
    n = 640
    monkeypatch.setattr(topk_encode, "PRE_BUDGET_BYTES", budget_rows * n * 4)
    monkeypatch.setattr(topk_encode, "MIN_CHUNK_ROWS", 1)
    assert len(topk_encode.row_chunks(40, n, 4)) == -(-40 // budget_rows)
    sae = _sae(method, params, n=n, d=16, auxk=True, k_aux=7)
    x = torch.randn(40, 16)
    dead = torch.rand(n) < 0.5
    _compare(sae, x, dead)


@pytest.mark.parametrize("block_latents", [1, 5, 640])
def test_encoder_gradient_summed_block_by_block_matches_the_dense_path(monkeypatch, block_latents):
    # W_enc's gradient written a few latents at a time (to bound the transposing copy's temporary)
    # equals the dense path's, with listed and block AuxK codes.
    monkeypatch.setattr(topk_encode, "SUM_BLOCK_BYTES", block_latents * 16 * 4)
    for density in (0.0, math.inf):
        monkeypatch.setattr(topk_encode, "AUX_BLOCK_DENSITY", density)
        sae = _sae("topk", {"k": 3}, n=640, d=16, auxk=True, k_aux=7)
        _compare(sae, torch.randn(40, 16), torch.rand(640) < 0.5)


# ---- bfloat16 autocast on the sparse path -------------------------------------------------------
# The bf16 step selects on a bfloat16 P, so near-ties may pick other latents than float32 does (a
# different, equally valid code). Its gradients are therefore checked against the float32 autograd
# reference taken on the support the bf16 step selected, and the selection itself is checked to be
# a top-k of the float32 P up to P's bfloat16 rounding.
BF16_LOSS_RTOL = 1e-2  # loss terms: relative error
BF16_GRAD_RTOL = (
    3e-2  # gradients: ‖g_bf16 − g_fp32‖ / ‖g_fp32‖ (bfloat16 keeps 8 significant bits: 2⁻⁸ ≈ 0.4 % per rounding)
)


def _support(code, n):
    mask = torch.zeros(code.n_rows, n, dtype=torch.bool)
    mask[code.rows, code.latents] = True
    return mask


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _bf16_step(monkeypatch, sae, x, dead):
    """The sparse step under bfloat16 autocast, and the EncodeState it selected with."""
    from saelab.kernels import step as step_module

    plans = []

    def capture(x_, W_enc, b_enc, b_dec, plan):
        plans.append(plan)
        return topk_encode.encode(x_, W_enc, b_enc, b_dec, plan)

    monkeypatch.setattr(step_module, "encode", capture)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert uses_sparse_kernel(sae)
        out = compute_step(sae, x, 0.0, dead)
    return out, plans[0]


@pytest.mark.parametrize("aux_density", [None, 0.0, math.inf])  # no AuxK; AuxK as a dense block; as listed entries
@pytest.mark.parametrize("method,params", [("topk", {"k": 4}), ("batchtopk", {"k": 4})])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bfloat16_sparse_step_matches_the_float32_reference_on_its_support(
    monkeypatch, aux_density, method, params, seed
):
    from saelab.losses import auxk_term, squared_error

    auxk = aux_density is not None
    if auxk:
        monkeypatch.setattr(topk_encode, "AUX_BLOCK_DENSITY", aux_density)
    n, d = 512, 32
    sae = _sae(method, params, n, d, seed=seed, auxk=auxk, k_aux=16, aux_coef=1 / 32)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, d, generator=g)
    dead = torch.rand(n, generator=g) < 0.3 if auxk else None
    out, plan = _bf16_step(monkeypatch, sae, x, dead)
    assert plan.low == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in [out.x_hat, *out.losses.values()])

    # The float32 reference: plain autograd over dense tensors, on the bf16 step's support.
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    main = _support(plan.main, n)
    x_hat = (torch.relu(pre) * main) @ sae.W_dec + sae.b_dec
    ref = {"mse": squared_error(x_hat, x)}
    if auxk:
        aux = _support(plan.aux, n)
        assert not (aux & ~dead).any()
        ref["auxk"] = sae.cfg.aux_coef * auxk_term((torch.relu(pre) * aux) @ sae.W_dec, (x - x_hat).detach(), x)
    assert list(out.losses) == list(ref)
    for name, value in ref.items():
        assert abs(float((out.losses[name] - value).detach())) <= BF16_LOSS_RTOL * float(value.detach()), name
    g_ref = _grads(sum(ref.values()), sae)
    g_out = _grads(out.total, sae)
    for name in NAMES:
        assert _rel(g_out[name], g_ref[name]) <= BF16_GRAD_RTOL, f"grad {name}: {_rel(g_out[name], g_ref[name]):.4f}"

    # The selection is a top-k of the float32 P up to its bfloat16 rounding (2 ulps of the row's largest entry).
    pre = pre.detach()
    slack = 2 * 2.0**-8 * pre.abs().amax(dim=1, keepdim=True)
    if method == "topk":
        chosen_min = pre.masked_fill(~main, math.inf).amin(dim=1, keepdim=True)
        other_max = pre.masked_fill(main, -math.inf).amax(dim=1, keepdim=True)
        assert (other_max <= chosen_min + slack).all()
        assert (main.sum(1) == params["k"]).all()
    else:  # BatchTopK: k·B positive entries of the batch, the largest up to rounding
        assert int(main.sum()) == params["k"] * x.shape[0] and (pre[main] > 0).all()
        assert float(pre.masked_fill(main, -math.inf).max()) <= float(pre[main].min()) + float(slack.max())


@pytest.mark.parametrize(
    "method,params,penalty",
    [("multi_topk", {"k": 3}, None), ("matryoshka_batchtopk", {"k": 4}, None), ("relu", {}, "l1")],
)
def test_bfloat16_sparse_step_stays_close_to_float32_for_every_planned_method(monkeypatch, method, params, penalty):
    # Losses and gradients within the bfloat16 tolerances when the selection has no near-ties to flip:
    # pre-activations with gaps far above bfloat16's rounding (a ReLU code has no selection to flip).
    n, d = 256, 16
    extra = (
        {"penalty": penalty, "kernel": "sparse"} if penalty else {}
    )  # a ReLU code at init is dense: "auto" would take the dense path
    sae = _sae(method, params, n, d, seed=5, auxk=method != "relu", k_aux=8, **extra)
    if method != "relu":
        with torch.no_grad():  # latent i's pre-activation ≈ i·0.05 + small: the order is fixed, gaps ≫ rounding
            sae.W_enc.mul_(1e-3)
            sae.b_enc.copy_(torch.arange(n) * 0.05 - 5)
    x = torch.randn(48, d, generator=torch.Generator().manual_seed(5))
    dead = torch.arange(n) % 3 == 0
    ref = dense_step(sae, x, 0.0, dead)
    out, _ = _bf16_step(monkeypatch, sae, x, dead)
    assert list(out.losses) == list(ref.losses)
    for name in ref.losses:
        assert (
            abs(float((out.losses[name] - ref.losses[name]).detach()))
            <= BF16_LOSS_RTOL * abs(float(ref.losses[name].detach())) + 1e-6
        ), name
    g_ref, g_out = _grads(ref.total, sae), _grads(out.total, sae)
    for name in NAMES:
        assert _rel(g_out[name], g_ref[name]) <= BF16_GRAD_RTOL, f"grad {name}: {_rel(g_out[name], g_ref[name]):.4f}"
    assert sae.W_enc.dtype == torch.float32 and g_out["W_enc"].dtype == torch.float32
