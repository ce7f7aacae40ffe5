"""The board score on sparse codes equals the dense computation it replaced, and the held-out cache changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import saelab.sources.othello.auroc as auroc_mod
import saelab.sources.othello.crossfit as crossfit_mod
import saelab.sources.othello.held_out as held_out_mod
import saelab.sources.othello.score as score_mod
from saelab.config import SAEConfig
from saelab.evals.evaluate import evaluate
from saelab.model.sae import SparseAutoencoder
from saelab.sources.othello.auroc import (
    KARVONEN_FRACTIONS,
    N_PAIRS,
    auroc_matrix,
    centered_ranks,
    f1_chunks,
    pair_indicators,
)
from saelab.sources.othello.codes import DenseCodes, SparseCodes, as_codes
from saelab.sources.othello.harvest import Harvest


@st.composite
def _codes(draw, max_rows=40, max_latents=6):
    """Small codes with ties, negative entries, all-zero and never-zero latents, and their labels."""
    P = draw(st.integers(4, max_rows))
    L = draw(st.integers(1, max_latents))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    levels = np.array([-1.5, -0.5, 0.5, 1.0, 2.0, 3.0], dtype=np.float32)  # few values: many ties
    x = levels[rng.integers(0, len(levels), (P, L))]
    x[rng.random((P, L)) < draw(st.floats(0.0, 1.0))] = 0.0
    if draw(st.booleans()):
        x[:, 0] = 0.0  # a dead latent
    if draw(st.booleans()):
        x = np.abs(x)  # ReLU-like codes
    labels = rng.integers(0, 3, (P, 64)).astype(np.uint8)
    labels[:, 0] = 1  # a pair that always holds and two that never do: AUROC undefined
    return x, labels


def _hand_auroc(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mann–Whitney by counting: P(positive > negative) + half P(tie), NaN where a class is empty."""
    y = pair_indicators(labels).numpy().astype(np.float64)
    out = np.empty((x.shape[1], N_PAIRS))
    for l in range(x.shape[1]):
        g = (x[:, l, None] > x[None, :, l]) + 0.5 * (x[:, l, None] == x[None, :, l])
        u = np.einsum("ip,ij,jp->p", y, g, 1 - y)
        denom = y.sum(0) * (1 - y).sum(0)
        out[l] = np.where(denom > 0, u / np.where(denom > 0, denom, 1), np.nan)
    return out


def dense_auroc_reference(acts, labels) -> torch.Tensor:
    """The dense computation the sparse one replaced: centred ranks of every column times the indicators."""
    a = as_codes(acts).to_dense()
    y = pair_indicators(labels)
    P = a.shape[0]
    n_pos = y.sum(0).double()
    denom = n_pos * (P - n_pos)
    auc = 0.5 + (centered_ranks(a).T.double() @ y.double()) / denom
    auc[:, denom == 0] = float("nan")
    return auc.float()


def dense_f1_reference(acts, labels, fr, chunk=None):
    """F1 of "act > f · max act" per (latent, fraction, pair) by direct counting on the dense codes."""
    a = as_codes(acts).to_dense()
    y = pair_indicators(labels).bool()
    top = a.amax(0) if a.shape[0] else torch.zeros(a.shape[1])
    fires = (a.unsqueeze(1) > fr.view(1, -1, 1) * top.view(1, 1, -1)) & (top > 0)  # [P, F, L]
    tp = torch.einsum("pfl,pq->lfq", fires.double(), y.double())
    pred = fires.sum(0).T.double()  # [L, F]
    yield 0, 2 * tp / (pred.unsqueeze(-1) + y.sum(0).double()).clamp(min=1)


@settings(max_examples=60, deadline=None)
@given(_codes())
def test_sparse_auroc_equals_counting_and_the_dense_ranks(case):
    x, labels = case
    got = auroc_matrix(x, labels).double().numpy()
    np.testing.assert_allclose(got, _hand_auroc(x, labels), rtol=0, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(got, dense_auroc_reference(x, labels).double().numpy(), atol=1e-6, equal_nan=True)
    assert np.isnan(got[:, 1]).all() and np.isnan(got[:, 3 * 0 + 0]).all()  # square 0 is always 'mine'


@settings(max_examples=60, deadline=None)
@given(_codes(), st.sampled_from([1, 2, 2048]))
def test_sparse_f1_equals_direct_counting(case, chunk):
    x, labels = case
    fr = torch.tensor(KARVONEN_FRACTIONS)
    got = torch.cat([f1 for _, f1 in f1_chunks(x, labels, fr, chunk)])
    (_, want), *_ = dense_f1_reference(x, labels, fr)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(_codes())
def test_sparse_codes_hold_exactly_the_dense_codes(case):
    x, _ = case
    c = SparseCodes.from_dense(x)
    assert c.nnz == int((x != 0).sum())
    np.testing.assert_array_equal(c.to_dense().numpy(), x)
    keep = np.arange(len(x)) % 3 != 1
    np.testing.assert_array_equal(c.select_rows(keep).to_dense().numpy(), x[keep])
    cols = [x.shape[1] - 1, 0, x.shape[1] - 1]
    np.testing.assert_array_equal(c.columns(cols).numpy(), x[:, cols])
    np.testing.assert_array_equal(c.col_max().numpy(), x.max(0))
    d = DenseCodes(torch.from_numpy(x))
    np.testing.assert_array_equal(d.select_rows(keep).to_dense().numpy(), x[keep])
    np.testing.assert_array_equal(d.columns(cols).numpy(), x[:, cols])
    for codes in (c, d):
        which, rows, values = codes.entries_of(cols)
        block = np.zeros((len(x), len(cols)), np.float32)
        block[rows.numpy(), which.numpy()] = values.numpy()
        np.testing.assert_array_equal(block, x[:, cols])
        np.testing.assert_array_equal(codes.column_chunk(0, 1).to_dense().numpy(), x[:, :1])


def _planted_data(games=40, moves=30, d_in=24, seed=0):
    """Activations that carry a few board indicators plus noise, with their labels and (game, move) positions."""
    rng = np.random.default_rng(seed)
    P = games * moves
    labels = rng.integers(0, 3, (P, 64)).astype(np.uint8)
    y = pair_indicators(labels).numpy()
    acts = rng.normal(0, 1, (P, d_in)).astype(np.float32)
    acts[:, :8] += 3 * y[:, 3 * np.arange(8) + 1]  # squares 0..7 'mine' are readable
    positions = np.stack([np.repeat(np.arange(games), moves), np.tile(np.arange(moves), games)], 1).astype(np.int32)
    return Harvest(acts, labels, positions, {"source": "othello", "games": games, "layer": 0})


def test_the_score_on_sparse_codes_equals_the_dense_implementation(monkeypatch):
    data = _planted_data()
    sae = SparseAutoencoder(SAEConfig(n_latents=64, method="topk", method_params={"k": 6}, d_in=24, b_dec_init="zero"))
    sae.reset_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.W_enc[:, :8] += 2 * torch.eye(24)[:, :8]  # latents 0..7 read the planted squares
    findable = np.zeros((64, 3), dtype=bool)
    findable[:8, 1] = True
    source = {"source": "othello", "layer": 0}
    new = score_mod.score_sae(sae, source, data=data, findable=findable, n_boot=40).to_dict()
    assert new["good_classifiers"] > 0 and new["good_classifiers_naive"] > 0  # the comparison sees real classifiers
    for module in (crossfit_mod, score_mod):
        monkeypatch.setattr(module, "auroc_matrix", dense_auroc_reference)
    for module in (crossfit_mod, auroc_mod):
        monkeypatch.setattr(module, "f1_chunks", dense_f1_reference)
    old = score_mod.score_sae(sae, source, data=data, findable=findable, n_boot=40).to_dict()
    assert new.keys() == old.keys()
    for key in new:
        if isinstance(new[key], float):
            assert new[key] == pytest.approx(old[key], abs=1e-9, nan_ok=True), key
        elif key == "best_auroc":
            np.testing.assert_allclose(np.array(new[key], float), np.array(old[key], float), atol=1e-6)
        else:
            assert new[key] == old[key], key


def test_mostly_non_zero_codes_stay_dense_and_score_the_same():
    data = _planted_data(games=20)
    rng = np.random.default_rng(2)
    x = np.abs(rng.normal(size=(len(data.labels), 12))).astype(np.float32) + 0.01  # leaky: nothing is zero
    x[:, :4] += 2 * pair_indicators(data.labels).numpy()[:, 3 * np.arange(4) + 1]
    x[:, 5] = 0.0  # one dead latent
    assert isinstance(as_codes(x), DenseCodes) and isinstance(as_codes(x * (x > 1.5)), SparseCodes)
    games = data.positions[:, 0]
    dense, sparse = DenseCodes(torch.from_numpy(x)), SparseCodes.from_dense(x)
    for f in (
        lambda c: auroc_matrix(c, data.labels),
        lambda c: crossfit_mod.crossfit_good_counts(c, data.labels, games, n_boot=20),
        lambda c: crossfit_mod.crossfit_coverage(c, data.labels, games, n_boot=20),
        lambda c: auroc_mod.coverage(c, data.labels),
    ):
        a, b = f(dense), f(sparse)
        if isinstance(a, torch.Tensor):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, equal_nan=True)
        else:
            assert _flat(a) == pytest.approx(_flat(b), nan_ok=True)


def _flat(d, path="") -> dict:
    """Nested dicts and lists → {path: number} (strings kept out), for approximate comparison."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{path}{k}."))
        elif isinstance(v, list):
            out.update(_flat({str(i): x for i, x in enumerate(v)}, f"{path}{k}."))
        elif not isinstance(v, str):
            out[path + k] = float("nan") if v is None else v
    return out


def test_latent_activations_keep_every_non_zero_of_the_code():
    sae = SparseAutoencoder(SAEConfig(n_latents=32, method="topk", method_params={"k": 4}, d_in=8))
    sae.reset_weights(torch.Generator().manual_seed(1))
    acts = np.random.default_rng(1).normal(size=(300, 8)).astype(np.float32)
    dense = torch.zeros(300, 32)

    def keep(z, first):
        dense[first : first + z.shape[0]] = z

    evaluate(sae, acts, rows="all", batch_size=64, scan=False, on_codes=keep)
    codes, _ = score_mod.latent_activations(sae, acts, batch=64)
    assert codes.shape == (300, 32) and codes.nnz == int((dense != 0).sum()) <= 300 * 4
    np.testing.assert_array_equal(codes.to_dense().numpy(), dense.numpy())
    relu = SparseAutoencoder(SAEConfig(n_latents=32, method="relu", d_in=8))  # about half the pre-activations > 0
    relu.reset_weights(torch.Generator().manual_seed(1))
    with torch.no_grad():
        relu.b_enc.fill_(10.0)  # every latent fires everywhere: the dense form is the smaller one
    codes, _ = score_mod.latent_activations(relu, acts, batch=64)
    assert isinstance(codes, DenseCodes) and bool((codes.x > 0).all())


def test_the_held_out_cache_returns_what_it_computed_and_recomputes_a_broken_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("SAELAB_CACHE_DIR", str(tmp_path))
    source = {"source": "othello", "model": "default", "layer": 2, "trim_start": 5, "trim_end": 5, "seed": 3}
    fresh, mask = held_out_mod.held_out_data(source, games=6, cache=False)
    assert not list(tmp_path.rglob("*.npz"))
    first, mask1 = held_out_mod.held_out_data(source, games=6)
    (entry,) = tmp_path.rglob("*.npz")
    real_harvest = held_out_mod.harvest

    def refuse(*a, **k):
        raise AssertionError("harvested again although the cache holds these games")

    monkeypatch.setattr(held_out_mod, "harvest", refuse)
    hit, mask2 = held_out_mod.held_out_data(source, games=6)
    for got in (first, hit):
        for name in ("activations", "labels", "positions"):
            np.testing.assert_array_equal(getattr(got, name), getattr(fresh, name))
        assert got.source == fresh.source
    np.testing.assert_array_equal(mask1, mask)
    np.testing.assert_array_equal(mask2, mask)
    entry.write_bytes(entry.read_bytes()[:100])  # a truncated entry is recomputed, not trusted
    monkeypatch.setattr(held_out_mod, "harvest", real_harvest)
    again, mask3 = held_out_mod.held_out_data(source, games=6)
    np.testing.assert_array_equal(again.activations, fresh.activations)
    np.testing.assert_array_equal(mask3, mask)
    held_out_mod.held_out_data({**source, "seed": 4}, games=6)  # other games: another entry
    assert len(list(tmp_path.rglob("*.npz"))) == 2
