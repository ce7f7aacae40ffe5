"""The native row kernels (kernels/native) compute what the torch operators they replace compute, and fall back cleanly."""

import multiprocessing
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from saelab.kernels import topk_encode
from saelab.kernels.native import build, ops
from saelab.kernels.segment import EntrySet
from saelab.kernels.sparse_code import SparseCode

pytestmark = pytest.mark.skipif(ops.why_unavailable() is not None, reason="no C++ compiler here")

# Widths that exercise whole vector chunks (128 floats with AVX-512, 64 with AVX2), their tails, and tails alone.
WIDTHS = [1, 5, 64, 128, 200, 300]


def _entries(rng, rows, n, width):
    """A fixed-width code: each row's `width` distinct latents."""
    lat = torch.stack([torch.randperm(n, generator=rng)[:width] for _ in range(rows)])
    return lat, torch.rand(rows, width, generator=rng)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 400), st.integers(1, 50), st.integers(0, 2**31 - 1))
def test_the_latent_sort_is_torchs_stable_argsort(nnz, n, seed):
    latents = torch.randint(0, n, (nnz,), generator=torch.Generator().manual_seed(seed))
    order, crow = ops.sort_by_latent(latents, n)
    assert torch.equal(order, torch.argsort(latents, stable=True))
    assert torch.equal(
        crow, torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(latents, minlength=n).cumsum(0)])
    )


def test_the_latent_sort_refuses_ids_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        ops.sort_by_latent(torch.tensor([0, 4]), 4)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(1, 5), st.integers(0, 9)), min_size=1, max_size=3),
    st.integers(0, 999),
)
def test_rows_in_order_are_the_stacked_codes_rows(codes, seed):
    layout = [(rows * width, width, off) for rows, width, off in codes]
    stacked = torch.cat([torch.arange(rows).repeat_interleave(width) + off for rows, width, off in codes])
    order = torch.randperm(stacked.numel(), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(ops.rows_in_order(order, layout), stacked[order])


@pytest.mark.parametrize("d", WIDTHS)
def test_fused_dots_and_sums_match_the_dense_reference(d):
    g = torch.Generator().manual_seed(d)
    rows, n, width = 37, 29, 6
    lat, z = _entries(g, rows, n, width)
    lat, z = lat.reshape(-1), z.reshape(-1)
    by_latent, table = torch.randn(n, d, generator=g), torch.randn(rows, d, generator=g)
    entries = EntrySet([SparseCode.fixed_width(lat.view(rows, width), z.view(rows, width))], n, [0])
    row_of = torch.arange(rows).repeat_interleave(width)
    want_dots = (by_latent[lat] * table[row_of]).sum(-1)
    want_sums = torch.zeros(n, d, dtype=torch.float64).index_add_(0, lat, (z[:, None] * table[row_of]).double()).float()
    dots, sums = entries.dots_and_sums(by_latent, table, z)
    assert torch.allclose(dots, want_dots, atol=1e-5 * d**0.5) and torch.allclose(sums, want_sums, atol=1e-5 * d**0.5)
    # Blocks of latents (the encoder's blocked sums), into a given buffer, and each half alone.
    for lo, hi, part in entries.sum_rows_blocks(table, z, 7, transient=True):
        assert torch.allclose(part, want_sums[lo:hi], atol=1e-5 * d**0.5)
    only_dots, none = ops.segment_dots_sums(
        by_latent, table, entries.sorted_rows, entries.order, z, entries.crow, sums=False
    )
    assert none is None and torch.allclose(only_dots, dots, atol=1e-6 * d**0.5)
    out = torch.full((n, d), float("nan"))
    _, into = ops.segment_dots_sums(
        None, table, entries.sorted_rows, entries.order, z, entries.crow, dots=False, out=out
    )
    assert into is out and torch.allclose(out, sums, atol=1e-6 * d**0.5)  # same sums (contraction may differ)


@pytest.mark.parametrize("n", [5, 16, 37])  # fewer, exactly and not a multiple of the 16 latents stored at once
def test_sums_written_as_columns_are_the_transposed_sums(monkeypatch, n):
    g = torch.Generator().manual_seed(n)
    rows, d, width = 21, 130, 3
    lat, z = _entries(g, rows, n, width)
    entries = EntrySet([SparseCode.fixed_width(lat, z)], n, [0])
    table = torch.randn(rows, d, generator=g)
    out = torch.full((d, n), float("nan"))
    entries.sum_rows_into_columns(table, z, out, block=4)
    assert torch.allclose(out, entries.sum_rows(table, z).t(), atol=1e-5)
    monkeypatch.setattr(ops, "usable", lambda *t: False)  # the torch path: blocks of 4 latents
    reference = torch.full((d, n), float("nan"))
    EntrySet([SparseCode.fixed_width(lat, z)], n, [0]).sum_rows_into_columns(table, z, reference, block=4)
    assert torch.allclose(out, reference, atol=1e-5)


def test_two_codes_share_one_sort_and_index_their_own_blocks_of_a_stacked_table(monkeypatch):
    g = torch.Generator().manual_seed(0)
    rows, n, d = 16, 40, 130
    codes = [SparseCode.fixed_width(*_entries(g, rows, n, w)) for w in (3, 7)]
    table, by_latent = torch.randn(2 * rows, d, generator=g), torch.randn(n, d, generator=g)
    weights = torch.cat([c.values for c in codes])
    native = EntrySet(codes, n, [0, rows])
    dots, sums = native.dots_and_sums(by_latent, table, weights)
    monkeypatch.setattr(ops, "usable", lambda *t: False)  # the torch path's answer for the same entries
    reference = EntrySet(codes, n, [0, rows])
    assert torch.equal(native.order, reference.order) and torch.equal(native.sorted_rows, reference.sorted_rows)
    assert torch.allclose(sums, reference.sum_rows(table, weights), atol=1e-4)
    assert torch.allclose(dots, reference.dots(by_latent, table), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", WIDTHS)
def test_gather_sum_is_embedding_bag(dtype, d):
    g = torch.Generator().manual_seed(d)
    n, rows = 50, 23
    table = torch.randn(n, d, generator=g).to(dtype)
    counts = torch.randint(0, 9, (rows,), generator=g)  # ragged, with empty rows
    crow = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    lat = torch.randint(0, n, (int(crow[-1]),), generator=g)
    val = torch.rand(lat.numel(), generator=g)
    want = F.embedding_bag(lat, table.float(), crow[:-1], mode="sum", per_sample_weights=val)
    assert torch.allclose(ops.gather_sum(table, lat, val, crow), want, atol=1e-5 * d**0.5)


def _check_topk(mat, cols, k):
    values, local, ids = ops.topk_among(mat, cols, k)
    sub = mat[:, cols].float()
    assert torch.equal(values.sort(1).values, sub.topk(k, dim=1).values.sort(1).values)
    assert torch.equal(sub.gather(1, local), values) and torch.equal(ids, cols[local])
    assert bool((local.diff(dim=1) > 0).all()), "positions come ascending"


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 60), st.data())
def test_topk_among_a_column_subset_is_torch_topk_of_those_columns(rows, m, data):
    n = m + data.draw(st.integers(0, 20))
    k = data.draw(st.integers(1, m))
    seed = data.draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    cols = torch.randperm(n, generator=g)[:m].sort().values
    # Small integers: many ties, signs and zeros.
    mat = torch.randint(-3, 4, (rows, n), generator=g).float() * data.draw(st.sampled_from([1.0, 1e-30, 1e30]))
    _check_topk(mat, cols, k)
    _check_topk(mat.bfloat16(), cols, k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k,group", [(1024, 8, 16), (1024, 8, 1), (640, 5, 8), (96, 96, 1)])
@pytest.mark.parametrize("sorted_", [False, True])
@pytest.mark.parametrize("with_aux", [True, False])  # without AuxK, only the group maxima are rounded
def test_select_rows_is_topk_of_p_plus_bias_rounded_as_torch_adds(dtype, n, k, group, sorted_, with_aux):
    g = torch.Generator().manual_seed(n + k)
    P = torch.randn(33, n, generator=g).to(dtype)
    bias = (torch.randn(n, generator=g) / 3).to(dtype)
    dead = torch.randperm(n, generator=g)[: n // 3].sort().values
    before = P.clone()
    values, cols, aux = ops.select_rows(P, bias, k, group, sorted_, dead if with_aux else None, 7)
    assert torch.equal(P, before), "P itself is left without the bias"
    full = (P + bias).float()  # torch's add in P's dtype, upcast exactly
    assert torch.equal(full.gather(1, cols), values)
    assert torch.equal(values.sort(1, descending=True).values, full.topk(k, dim=1).values)
    if sorted_:
        assert bool((values.diff(dim=1) <= 0).all()), "sorted by decreasing value"
    else:
        assert bool((cols.diff(dim=1) > 0).all()), "by ascending column"
    if not with_aux:
        assert aux is None
        return
    aux_v, aux_l, aux_ids = aux
    sub = full[:, dead]
    assert torch.equal(aux_v.sort(1).values, sub.topk(7, dim=1).values.sort(1).values)
    assert torch.equal(sub.gather(1, aux_l), aux_v) and torch.equal(dead[aux_l], aux_ids)


def test_topk_among_breaks_ties_by_the_first_columns_and_reads_wide_rows():
    values, local, _ = ops.topk_among(torch.zeros(3, 10), torch.arange(10), 4)
    assert torch.equal(local, torch.arange(4).expand(3, 4)) and not values.any()
    g = torch.Generator().manual_seed(0)
    mat = torch.randn(64, 5000, generator=g)
    _check_topk(mat, torch.randperm(5000, generator=g)[:1500].sort().values, 384)


def test_rows_alike_and_unlike_select_the_same_as_torch():
    # top_k guesses each row's threshold from the row before: rows of wildly different scales and
    # signs make the guess too high (fewer than k kept: the radix select runs) and too low (many kept).
    g = torch.Generator().manual_seed(4)
    scales = torch.tensor([1.0, 1e-20, 1e20, 1.0, -1.0, 1e-3, 1e3, 0.0]).repeat(4)
    mat = torch.randn(scales.numel(), 3000, generator=g) * scales.unsqueeze(1)
    cols = torch.randperm(3000, generator=g)[:1100].sort().values
    for k in (1, 37, 384, 1100):
        _check_topk(mat, cols, k)
        _check_topk(mat.bfloat16(), cols, k)
    # The k-th group maximum is guessed the same way (from the previous row's maxima).
    for k, group in ((1, 8), (8, 12), (40, 8), (100, 24)):
        for P in (mat, mat.bfloat16()):
            values, picked, _ = ops.select_rows(P.contiguous(), None, k, group, True)
            expected = P.float().topk(k, dim=1)
            assert torch.equal(values, expected.values) and torch.equal(P.float().gather(1, picked), values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sorted_", [False, True])
def test_select_rows_is_the_exact_top_k_with_ties_to_the_lower_column(dtype, sorted_):
    # Small integers: many ties at the k-th place; the rule is (value descending, column ascending).
    g = torch.Generator().manual_seed(7)
    P = torch.randint(-2, 3, (40, 512), generator=g).to(dtype)
    P[0] = 0  # one row of a single value: the first k columns
    k = 9
    values, cols, _ = ops.select_rows(P, None, k, 16, sorted_)
    key = P.float() * 1024 - torch.arange(512) / 512  # larger value first, then lower column
    expected = key.topk(k, dim=1).indices
    expected = expected if sorted_ else expected.sort(1).values
    assert torch.equal(cols, expected)
    assert torch.equal(values, P.float().gather(1, cols))


@pytest.mark.parametrize("sorted_", [False, True])
def test_select_rows_ranks_bfloat16_sums_after_rounding(sorted_):
    # 1 + a bias below half a bfloat16 step rounds to 1 in every column: all tie, so the lowest
    # columns win, though the unrounded sums grow with the column.
    P = torch.ones(6, 512, dtype=torch.bfloat16)
    bias = (torch.arange(512) * 2.0**-20).to(torch.bfloat16)
    assert torch.equal(P + bias, P)
    values, cols, _ = ops.select_rows(P, bias, 9, 16, sorted_)
    assert torch.equal(cols, torch.arange(9).expand(6, 9)) and bool((values == 1).all())


@pytest.mark.parametrize("d", WIDTHS)
def test_project_rows_removes_each_rows_component_as_torch(d):
    g = torch.Generator().manual_seed(d)
    W = torch.randn(37, d, generator=g) * 3
    W[5] = 0  # a zero row: the clamped norm leaves its gradient as it was
    G = torch.randn(37, d, generator=g)
    sq = W.norm(dim=1).clamp_min(1e-12).square()
    expected = G - ((G * W).sum(1) / sq).unsqueeze(1) * W
    projected = G.clone()
    ops.project_rows(W, projected)
    assert torch.allclose(projected, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(projected[5], G[5])
    if d > 1:
        assert (
            float(((projected * W).sum(1) / (W.norm(dim=1) * projected.norm(dim=1)).clamp_min(1e-12)).abs().max())
            < 1e-5
        )
    with pytest.raises(ValueError, match="contiguous float32"):
        ops.project_rows(torch.zeros(4, 6).t(), torch.zeros(6, 4))


def test_topk_among_says_what_is_wrong():
    with pytest.raises(ValueError, match="k must lie in"):
        ops.topk_among(torch.zeros(2, 5), torch.arange(3), 4)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        ops.topk_among(torch.zeros(2, 5, dtype=torch.float64), torch.arange(3), 1)


def _sae(method, params, n, d, seed=3):
    from saelab.config import SAEConfig
    from saelab.model.sae import SparseAutoencoder

    cfg = SAEConfig(n_latents=n, method=method, method_params=params, d_in=d, b_dec_init="zero", auxk=True, k_aux=40)
    sae = SparseAutoencoder(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return sae


@pytest.mark.parametrize("method,params", [("topk", {"k": 5}), ("multi_topk", {"k": 3}), ("batchtopk", {"k": 4})])
def test_a_step_with_the_native_kernels_equals_the_step_with_torchs(monkeypatch, method, params):
    from saelab.kernels import sparse_step

    monkeypatch.setattr(topk_encode, "AUX_BLOCK_DENSITY", 2.0)  # AuxK by rows on both sides
    sae = _sae(method, params, n=700, d=144)
    x = torch.randn(48, 144, generator=torch.Generator().manual_seed(1))
    dead = torch.rand(700, generator=torch.Generator().manual_seed(2)) < 0.4
    params_ = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]

    def run():
        out = sparse_step(sae, x, 0.0, dead)
        return out.total.detach(), torch.autograd.grad(out.total, params_)

    native_loss, native_grads = run()
    monkeypatch.setattr(ops, "usable", lambda *t: False)
    torch_loss, torch_grads = run()
    assert torch.allclose(native_loss, torch_loss, rtol=1e-6)
    for a, b in zip(native_grads, torch_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


def _fresh_load(monkeypatch, tmp_path, **env):
    monkeypatch.setenv("SAELAB_CACHE_DIR", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    build._load_once.cache_clear()
    monkeypatch.setattr(ops, "_warned", False)


def test_without_a_compiler_the_torch_path_runs_and_says_why_once(monkeypatch, tmp_path):
    _fresh_load(monkeypatch, tmp_path, CXX="no-such-compiler-here")
    try:
        assert "no C++ compiler" in ops.why_unavailable()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not ops.usable(torch.zeros(1)) and not ops.usable(torch.zeros(1))
        assert len(caught) == 1 and "torch's operators" in str(caught[0].message)
    finally:
        build._load_once.cache_clear()


def test_a_failing_build_leaves_no_partial_library(monkeypatch, tmp_path):
    _fresh_load(monkeypatch, tmp_path, CXX="false")  # a "compiler" that always fails
    try:
        assert "failed on rows.cpp" in ops.why_unavailable()
        assert not [p for p in (tmp_path / "native").iterdir() if p.suffix == ".so"]
    finally:
        build._load_once.cache_clear()


def _select_matches_topk(P: torch.Tensor, k: int) -> bool:
    values, cols, _ = ops.select_rows(P, None, k, 4, True)
    expected = torch.topk(P, k)
    return torch.equal(values, expected.values) and torch.equal(cols, expected.indices)


def test_without_openmp_the_kernels_run_on_their_own_threads_and_agree(monkeypatch, tmp_path):
    _fresh_load(monkeypatch, tmp_path, SAELAB_SPARSE_THREADS="2")
    monkeypatch.setattr(build, "OPENMP", ["-fno-such-openmp-flag"])  # as a compiler without OpenMP refuses it
    try:
        assert ops.why_unavailable() is None and ops.threading() == "std::threads"
        assert _select_matches_topk(torch.randn(64, 256, generator=torch.Generator().manual_seed(0)), 8)
    finally:
        build._load_once.cache_clear()


def test_where_torch_has_another_openmp_runtime_the_kernels_keep_their_own_threads(monkeypatch, tmp_path):
    _fresh_load(monkeypatch, tmp_path)
    monkeypatch.setattr(build, "torch_uses_libgomp", lambda: False)
    try:
        assert ops.why_unavailable() is None and ops.threading() == "std::threads"
    finally:
        build._load_once.cache_clear()


def test_the_kernels_join_torchs_pool_exactly_when_it_is_libgomp():
    # torch's Linux pip wheels (this project's pin) run on libgomp, and gcc and clang build with -fopenmp.
    assert ops.threading() == ("OpenMP" if build.torch_uses_libgomp() else "std::threads")


def _child_selects(P: torch.Tensor) -> None:
    os._exit(0 if _select_matches_topk(P, 8) else 1)


def test_a_forked_child_runs_the_kernels_after_its_parent_did(monkeypatch):
    # libgomp's pool does not survive a fork: the child must start threads of its own, not hang.
    monkeypatch.setenv("SAELAB_SPARSE_THREADS", "2")
    P = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    assert _select_matches_topk(P, 8)
    child = multiprocessing.get_context("fork").Process(target=_child_selects, args=(P,))
    child.start()
    child.join(120)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == 0


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("SAELAB_NATIVE", "0")
    assert ops.why_unavailable() == "switched off by SAELAB_NATIVE" and not ops.usable(torch.zeros(1))


def test_a_changed_source_builds_a_new_library(monkeypatch, tmp_path):
    cxx = build.compiler()
    before = build.library_path(cxx)
    changed = tmp_path / "rows.cpp"
    changed.write_text(build.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(build, "SOURCE", changed)
    assert build.library_path(cxx) != before


def test_make_install_builds_the_library_ahead_of_time(tmp_path):
    env = {"SAELAB_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "saelab.kernels.native"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "ready" in done.stdout
    assert len(list((tmp_path / "native").glob("saelab_rows-*.so"))) == 1
