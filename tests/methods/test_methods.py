"""Each sparsity method's defining property, checked on random inputs."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from saelab.errors import ConfigError
from saelab.methods.dimred import a_sequence, dimred_support
from saelab.methods.registry import activation_class, build_params, penalty_class


def make_activation(name, n, **params):
    cls = activation_class(name)
    return cls(build_params(cls, params, "method"), n)


def make_penalty(name, n, **params):
    cls = penalty_class(name)
    return cls(build_params(cls, params, "penalty"), n)


finite = st.floats(-5, 5, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(4, 40)), elements=finite), st.integers(1, 4))
def test_topk_keeps_exactly_k_positive_largest(pre, k):
    pre = torch.from_numpy(pre)
    k = min(k, pre.shape[1])
    z = make_activation("topk", pre.shape[1], k=k)(pre)
    kth = pre.topk(k, dim=-1).values[:, -1]
    nnz = (z != 0).sum(dim=-1)
    assert (nnz <= k).all()
    # Exactly k whenever the k-th largest pre-activation is positive (ReLU drops negatives).
    assert (nnz[kth > 0] == k).all()
    # Every kept value is the pre-activation itself, and no dropped entry exceeds a kept one.
    kept = z != 0
    assert torch.equal(z[kept], pre[kept])
    for row in range(pre.shape[0]):
        if kept[row].any():
            dropped = pre[row][~kept[row]]
            if dropped.numel():
                assert dropped.max() <= pre[row][kept[row]].min()


def test_batchtopk_averages_k_in_training_and_thresholds_at_inference():
    torch.manual_seed(0)
    act = make_activation("batchtopk", 50, k=5, threshold_momentum=0.5)
    act.train()
    pre = torch.randn(32, 50) + 1.0
    z = act(pre)
    assert (z != 0).sum().item() == 5 * 32  # k·B over the batch…
    assert (z != 0).sum(dim=-1).float().std() > 0  # …not k per sample
    act.observe(z)
    first = z[z > 0].min()
    assert act.threshold.item() == pytest.approx(first.item())
    pre2 = torch.randn(32, 50) + 1.0
    z2 = act(pre2)
    act.observe(z2)
    assert act.threshold.item() == pytest.approx(0.5 * first.item() + 0.5 * z2[z2 > 0].min().item())
    act.eval()
    x = torch.randn(16, 50) + 1.0
    batch_codes = act(x)
    single = torch.cat([act(x[i : i + 1]) for i in range(16)])
    assert torch.equal(batch_codes, single)  # batch-independent at inference
    t = act.threshold.item()
    assert torch.equal(batch_codes, torch.where(x > t, x, torch.zeros_like(x)))


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(5, 30)), elements=finite),
    st.integers(1, 4),
    st.floats(0, 0.5),
)
def test_leaky_topk_non_top_entries_below_eps(pre, k, eps):
    pre = torch.from_numpy(pre)
    z = make_activation("leaky_topk", pre.shape[1], k=k, eps=eps)(pre)
    x = torch.relu(pre)
    b = x.topk(k, dim=-1).values[:, -1:]
    top = x >= b
    assert torch.equal(z[top], x[top])
    assert (z[~top] <= eps + 1e-6).all()
    bd, xd = b.double(), x.double()
    rel = torch.where(bd > 0, eps / bd.clamp_min(1e-300), torch.zeros_like(bd)) * xd
    assert torch.allclose(z[~top].double(), rel[~top], atol=1e-6)


def test_leaky_topk_absolute_variant_scales_by_eps():
    pre = torch.tensor([[3.0, 2.0, 1.0, 0.5, -1.0]])
    z = make_activation("leaky_topk", 5, k=2, eps=0.1, eps_mode="absolute")(pre)
    assert torch.allclose(z, torch.tensor([[3.0, 2.0, 0.1, 0.05, 0.0]]))


def _dimred_reference(x, a, eps):
    """Slow geometric definition: S_x is the union of non-empty S minimizing a_|S| / Σ_{i∈S} x_i."""
    n = len(x)
    best, sets = math.inf, []
    for r in range(1, n + 1):
        for s in itertools.combinations(range(n), r):
            total = sum(x[i] for i in s)
            ratio = a[r] / total if total > 0 else math.inf
            if ratio < best * (1 - 1e-12):
                best, sets = ratio, [s]
            elif math.isclose(ratio, best, rel_tol=1e-12):
                sets.append(s)
    support = set().union(*sets) if best < math.inf else set(range(n))
    b = min(x[i] for i in support)
    return [x[i] if i in support else (eps / b * x[i] if b > 0 else 0.0) for i in range(n)]


def _random_rows(seed, n, rows=300):
    rng = np.random.default_rng(seed)
    # Mixed scales, exact zeros and repeated values exercise every branch.
    x = rng.exponential(size=(rows, n)) * (rng.random((rows, n)) < 0.8)
    x[:50] = np.sort(x[:50], axis=1)[:, ::-1] ** 3
    x[50:60, :3] = 0.7
    return x


def _unimodal(row, a):
    """Whether a_k / c_k has a single local minimum in k (then local search finds the global one)."""
    c = np.cumsum(np.sort(row)[::-1])
    f = np.where(c > 0, np.array(a[1:]) / np.where(c > 0, c, 1), np.inf)
    minima = [k for k in range(len(f)) if (k == 0 or f[k] < f[k - 1]) and (k == len(f) - 1 or f[k] <= f[k + 1])]
    return len(minima) <= 1


PARAMS = [(0.49, None), (0.15, 2), (0.3, 3), (0.8, None)]


@pytest.mark.parametrize("p,threshold", PARAMS)
def test_dimred_exact_matches_geometric_definition(p, threshold):
    n, eps = 7, 0.01
    x = _random_rows(int(p * 100), n)
    act = make_activation("dimred", n, eps=eps, p=p, p_threshold=threshold, support="exact")
    ref = np.array([_dimred_reference(list(row), a_sequence(n, p, threshold).tolist(), eps) for row in x])
    np.testing.assert_allclose(act(torch.from_numpy(x)).numpy(), ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("p,threshold", PARAMS)
def test_dimred_iteration_matches_geometric_definition_where_the_report_says(p, threshold):
    n, eps = 7, 0.01
    a = a_sequence(n, p, threshold).tolist()
    x = _random_rows(int(p * 100) + 1, n)
    keep = np.array([_unimodal(row, a) for row in x])
    assert keep.mean() > 0.8  # most random inputs are of this kind
    act = make_activation("dimred", n, eps=eps, p=p, p_threshold=threshold)
    ref = np.array([_dimred_reference(list(row), a, eps) for row in x[keep]])
    np.testing.assert_allclose(act(torch.from_numpy(x[keep])).numpy(), ref, rtol=1e-9, atol=1e-12)


def test_dimred_iteration_can_stop_at_a_local_minimum():
    # a_k/c_k for this row is lowest at k = 2 but has a second local minimum at k = 5, where
    # removing any one more entry does not help: the report's iteration stops there.
    row = np.array([[1.2480788, 1.17645677, 0.4994168, 0.48716537, 0.47704467, 0.18831405, 0.00648564]])
    iterative = make_activation("dimred", 7, p=0.49, p_threshold=None)
    exact = make_activation("dimred", 7, p=0.49, p_threshold=None, support="exact")
    assert dimred_support(torch.from_numpy(row), iterative.a).sum() == 5
    assert (exact(torch.from_numpy(row)) >= 1).sum() == 2


@settings(max_examples=25, deadline=None)
@given(st.integers(3, 200), st.floats(0.01, 0.99), st.one_of(st.none(), st.integers(2, 50)))
def test_dimred_a_sequence_meets_the_report_constraints(n, p, threshold):
    a = a_sequence(n, p, threshold).numpy()
    k = np.arange(2, n + 1)
    assert a[1] == 1.0
    assert (a[2:] < k / (k - 1) * a[1:-1]).all()  # every non-empty S is some S_x
    assert (a[2:] > a[1:-1]).all()
    d = np.diff(a[1:])
    # a_k − a_{k−1} ≤ a_{k−1} − a_{k−2}, up to float64 rounding of a (a few ulps of a ≈ 1, not of the small increments)
    assert (d[1:] <= d[:-1] * (1 + 1e-12) + 8 * np.finfo(np.float64).eps * a[2:-1]).all()


def test_dimred_is_vectorized_over_the_batch():
    torch.manual_seed(1)
    x = torch.rand(64, 40) ** 4
    act = make_activation("dimred", 40)
    support = dimred_support(x, act.a)
    rows = torch.stack([dimred_support(x[i : i + 1], act.a)[0] for i in range(64)])
    assert torch.equal(support, rows)


def test_jumprelu_forward_and_pseudo_derivatives():
    act = make_activation("jumprelu", 3, init_threshold=0.5, bandwidth=0.2)
    pre = torch.tensor([[0.45, 0.55, 1.0], [0.2, 0.58, -1.0]], requires_grad=True)
    z = act(pre)
    assert torch.allclose(z, torch.tensor([[0.0, 0.55, 1.0], [0.0, 0.58, 0.0]]))
    z.sum().backward()
    theta = 0.5
    # ∂z/∂θ = −(θ/ε)·K((pre−θ)/ε), rectangle kernel: |pre − θ| < ε/2 = 0.1 → latents 0 and 1.
    k = lambda v: float(abs((v - theta) / 0.2) < 0.5)
    expected_theta = torch.tensor(
        [-(theta / 0.2) * (k(0.45) + k(0.2)), -(theta / 0.2) * (k(0.55) + k(0.58)), -(theta / 0.2) * (k(1.0) + k(-1.0))]
    )
    # log-threshold parameterization: ∂/∂logθ = θ·∂/∂θ.
    assert torch.allclose(act.log_threshold.grad, expected_theta * theta)
    assert torch.equal(pre.grad, (pre > theta).float())


def test_penalties_match_hand_computation():
    z = torch.tensor([[0.0, 1.0, 4.0, 0.25], [2.0, 0.0, 0.0, 0.0]])
    assert make_penalty("l1", 4)(z).item() == pytest.approx((5.25 + 2.0) / 2)
    assert make_penalty("lp", 4, p=0.5)(z).item() == pytest.approx(((1 + 2 + 0.5) + math.sqrt(2)) / 2)
    assert make_penalty("lp", 4, p=0.5, c=0.1)(z).item() == pytest.approx(
        ((0.1**0.5) * (1 + 2 + 0.5) + math.sqrt(0.2)) / 2
    )
    assert make_penalty("lp", 4, p=1.0)(z).item() == pytest.approx(make_penalty("l1", 4)(z).item())
    fd = make_penalty("freshman", 4, p=2)(z).item()
    assert fd == pytest.approx(((5.25**2 / (1 + 16 + 0.0625)) / 4 + (4 / 4) / 4) / 2)
    wt = make_penalty("without_topk", 4, k=1, p=1)(z).item()
    assert wt == pytest.approx(((1.25) / 4 + 0) / 2)
    wt2 = make_penalty("without_topk", 4, k=1, p=2)(z).item()
    assert wt2 == pytest.approx((math.sqrt(1 + 0.0625) / 4) / 2)


def test_smoothed_l0_endpoints_and_freshman_k_over_n():
    pen = make_penalty("smoothed_l0", 1, eps=0.01, delta=2.0)
    assert pen(torch.zeros(1, 1)).item() == pytest.approx(0.01)
    assert pen(torch.full((1, 1), 2.0)).item() == pytest.approx(0.99)
    fresh = make_penalty("freshman", 10, p=2)
    k_sparse = torch.zeros(1, 10)
    k_sparse[0, :3] = 0.7
    assert fresh(k_sparse).item() == pytest.approx(3 / 10)
    assert make_penalty("without_topk", 10, k=3)(k_sparse).item() == 0.0


@pytest.mark.parametrize(
    "name,params", [("lp", {"p": 0.5}), ("freshman", {"p": 2}), ("without_topk", {"k": 2, "p": 2}), ("smoothed_l0", {})]
)
def test_penalty_gradients_are_finite_at_zero(name, params):
    z = torch.tensor([[0.0, 0.0, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    make_penalty(name, 4, **params)(z).backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize(
    "kind,name,params,field",
    [
        ("method", "leaky_topk", {"eps": -0.1}, "method.eps"),
        ("method", "topk", {"k": 0}, "method.k"),
        ("method", "topk", {"eps": 0.1}, "method.eps"),
        ("penalty", "without_topk", {"p": 3}, "penalty.p"),
        ("method", "dimred", {"p": 1.5}, "method.p"),
    ],
)
def test_bad_parameters_name_the_field(kind, name, params, field):
    cls = activation_class(name) if kind == "method" else penalty_class(name)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        build_params(cls, params, kind)


def test_unknown_method_lists_the_choices():
    with pytest.raises(ConfigError, match="method='nope'.*topk"):
        activation_class("nope")


def test_only_activations_that_keep_statistics_ask_the_trainer_for_their_codes():
    # The trainer gathers a step's non-zero code values (a compaction of the dense code) only for these.
    assert make_activation("batchtopk", 8, k=2).observes_codes
    assert not make_activation("topk", 8, k=2).observes_codes
    assert not make_activation("relu", 8).observes_codes

    class Counting(activation_class("topk")):  # a user's subclass that starts keeping statistics
        def observe(self, values):
            self.seen = values.numel()

    assert Counting(build_params(Counting, {"k": 2}, "method"), 8).observes_codes


@settings(max_examples=50, deadline=None)
@given(rows=st.integers(0, 6), n=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_fired_latents_of_a_dense_code_is_any_positive_entry_per_column(rows, n, seed):
    from saelab.step_output import fired_latents

    z = torch.randn(rows, n, generator=torch.Generator().manual_seed(seed))
    z[z.abs() < 0.5] = 0.0  # zeros and negatives (leaky codes) beside positives
    assert torch.equal(fired_latents(z, n), (z > 0).any(dim=0))


@settings(max_examples=40, deadline=None)
@given(p=st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0]), c=st.floats(0.1, 3.0), seed=st.integers(0, 2**16))
def test_lp_penalty_gradient_equals_autograd_of_the_formula_away_from_zero_and_zero_at_zero(p, c, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(5, 7, generator=g)
    z[torch.rand(5, 7, generator=g) < 0.4] = 0.0
    z.requires_grad_()
    value = make_penalty("lp", 7, p=p, c=c)(z)
    (grad,) = torch.autograd.grad(value * 3.0, z)  # a scale downstream, as alpha is
    nz = z.detach() != 0
    ref_z = z.detach().clone().requires_grad_()
    ref = (((c * ref_z.abs()) ** p) * nz).sum(-1).mean()  # zero entries masked out: their gradient is 0
    (ref_grad,) = torch.autograd.grad(ref * 3.0, ref_z)
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(grad[nz], ref_grad[nz], rtol=1e-5, atol=1e-6)
    assert torch.equal(grad[~nz], torch.zeros_like(grad[~nz]))


def _appendix_iteration(row, a):
    """The report's S_j / b_j iteration on one row, in plain Python floats (S_0 = every entry)."""
    support = list(range(len(row)))
    while True:
        k = len(support)
        bound = (1.0 - a[k - 1] / a[k]) * sum(row[i] for i in support) if k else 0.0
        kept = [i for i in support if row[i] >= bound]
        if kept == support:
            return set(support)
        support = kept


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 30), p=st.floats(0.05, 0.9), seed=st.integers(0, 2**16))
def test_dimred_support_is_the_appendix_iteration(n, p, seed):
    # Zeros, repeated values and scales from 1e-4 to 1e2 in every batch.
    rng = np.random.default_rng(seed)
    x = rng.exponential(size=(12, n)) * (10.0 ** rng.integers(-4, 3, size=(12, n))) * (rng.random((12, n)) < 0.7)
    x[:3, : n // 2] = 0.5
    a = a_sequence(n, p, 10)
    support = dimred_support(torch.from_numpy(x).float(), a)
    xf = torch.from_numpy(x).float().double().numpy()  # the float32 values the function sees
    for r in range(12):
        assert set(np.flatnonzero(support[r].numpy())) == _appendix_iteration(list(xf[r]), a.tolist())


ENTRYWISE = [
    ("l1", {}),
    ("lp", {"p": 0.5}),
    ("lp", {"p": 1.7, "c": 0.3}),
    ("smoothed_l0", {"eps": 0.05, "delta": 0.8}),
    ("freshman", {"p": 2.0}),
    ("freshman", {"p": 1.5}),
]


@pytest.mark.parametrize("name,params", ENTRYWISE)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 9), n=st.integers(1, 40), density=st.floats(0.0, 1.0))
def test_an_entrywise_penalty_reads_the_dense_value_and_gradient_from_the_entries(name, params, seed, rows, n, density):
    cls = penalty_class(name)
    pen = cls(build_params(cls, params, "penalty_params"), n)
    assert cls.entrywise
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(rows, n, generator=g, dtype=torch.float64) * 3
    z = torch.where(torch.rand(rows, n, generator=g, dtype=torch.float64) < density, z, torch.zeros_like(z))
    z[0] = 0.0  # a row without entries
    z.requires_grad_()
    dense = pen(z)
    r, c = (z.detach() > 0).nonzero(as_tuple=True)
    values = z.detach()[r, c].clone().requires_grad_()
    sparse = pen.on_entries(values, r, rows)
    torch.testing.assert_close(sparse, dense, rtol=1e-12, atol=1e-12)
    (gd,) = torch.autograd.grad(dense, z)
    if values.numel():
        (gs,) = torch.autograd.grad(sparse, values)
        torch.testing.assert_close(gs, gd[r, c], rtol=1e-10, atol=1e-12)
