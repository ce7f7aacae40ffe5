"""Rank-based AUROC, good-classifier counts and coverage against slow references."""

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu, rankdata

from saelab.sources.othello.auroc import (
    auroc_columns,
    auroc_matrix,
    average_ranks,
    coverage,
    good_classifier_report,
)


def _data(P=400, L=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=(P, 64)).astype(np.uint8)
    labels[:, 7] = 1  # a pair that always holds and two that never do: AUROC undefined
    # ReLU-like latents: many exact zeros and coarse values, so ties are everywhere.
    acts = np.maximum(rng.normal(size=(P, L)), 0).round(1).astype(np.float32)
    acts[:, 0] += 1.5 * (labels[:, 3] == 2)  # a latent that tracks (square 3, theirs)
    acts[:, 1] = -acts[:, 1]  # non-positive values, minimum not at zero
    return acts, labels


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=60), st.integers(1, 4))
def test_average_ranks_match_scipy(values, k):
    x = np.array(values * k, dtype=np.float32).reshape(k, -1).T.copy()
    got = average_ranks(torch.from_numpy(x)).numpy()
    assert np.allclose(got, rankdata(x, axis=0))


@pytest.mark.parametrize("density", [0.05, 0.5, 0.95, 1.0])
def test_sparse_and_dense_rank_paths_match_scipy(density):
    # Below DENSE_FRACTION non-minimum entries the flat sort runs, above it the per-column sort.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 7)).round(1).astype(np.float32)  # coarse values: ties everywhere
    x[rng.random(x.shape) > density] = -5.0
    x[:, 3] = rng.normal(size=500).astype(np.float32)  # one column of distinct values
    assert np.array_equal(average_ranks(torch.from_numpy(x)).numpy(), rankdata(x, axis=0))


def test_auroc_matrix_matches_mann_whitney():
    acts, labels = _data()
    auc = auroc_matrix(acts, labels).numpy()
    assert auc.shape == (6, 192)
    for l in range(6):
        for p in range(192):
            y = labels[:, p // 3] == p % 3
            if y.all() or not y.any():
                assert np.isnan(auc[l, p])
                continue
            u = mannwhitneyu(acts[y, l], acts[~y, l]).statistic / (y.sum() * (~y).sum())
            assert auc[l, p] == pytest.approx(u, abs=1e-5)
    assert auc[0, 3 * 3 + 2] > 0.9


def test_auroc_matches_pairwise_count():
    rng = np.random.default_rng(3)
    s = rng.integers(0, 4, size=(200, 3)).astype(np.float32)
    y = rng.random((200, 3)) < 0.3
    auc = auroc_columns(s, y).numpy()
    for k in range(3):
        pos, neg = s[y[:, k], k], s[~y[:, k], k]
        wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        assert auc[k] == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-6)


def test_perfect_latent_and_report_counts():
    acts, labels = _data(P=300, L=3, seed=1)
    onehot = np.stack([(labels[:, 5] == 1), (labels[:, 5] == 1), (labels[:, 9] == 0)], 1).astype(np.float32)
    auc = auroc_matrix(np.concatenate([acts, onehot], 1), labels)
    assert auc[3, 5 * 3 + 1] == pytest.approx(1.0)
    findable = np.zeros((64, 3), bool)
    findable[:10] = True
    rep = good_classifier_report(auc, findable)
    good = torch.nan_to_num(auc, nan=0) >= 0.9
    assert rep["good_classifiers"] == int(good.any(0).sum())
    assert rep["good_classifier_latents"] == int(good.any(1).sum())
    assert rep["good_classifier_latents"] >= 3  # the duplicate latent counts twice here ...
    assert [5, 1] in rep["good_pairs"] and [9, 0] in rep["good_pairs"]  # ... but the pair once
    assert rep["findable"] == 30
    assert rep["good_classifiers_frac"] == pytest.approx(rep["good_classifiers"] / 30)
    assert rep["best_auroc"][7 * 3 + 1] is None  # undefined pair


def _coverage_reference(acts, labels, fractions):
    best = np.zeros(192)
    for l in range(acts.shape[1]):
        m = acts[:, l].max()
        if m <= 0:
            continue
        for f in fractions:
            on = acts[:, l] > f * m
            for p in range(192):
                y = labels[:, p // 3] == p % 3
                d = on.sum() + y.sum()
                best[p] = max(best[p], 2 * (on & y).sum() / d if d else 0)
    present = np.array([(labels[:, p // 3] == p % 3).any() for p in range(192)])
    return best[present].mean(), best


def test_coverage_matches_slow_reference():
    acts, labels = _data(P=250, L=5, seed=2)
    fr = (0.0, 0.25, 0.5, 0.75)
    got = coverage(acts, labels, fractions=fr, chunk=2)
    want, best = _coverage_reference(acts, labels, fr)
    assert got["coverage"] == pytest.approx(want, abs=1e-6)
    assert got["best_f1"][3 * 3 + 2] == pytest.approx(best[3 * 3 + 2], abs=1e-5)
    assert got["best_f1"][7 * 3 + 0] is None  # never occurs


def test_bad_inputs_raise():
    acts, labels = _data(P=20, L=2)
    with pytest.raises(ValueError):
        auroc_matrix(acts[:10], labels)
    with pytest.raises(ValueError):
        auroc_matrix(np.full((20, 2), np.nan, np.float32), labels)
    with pytest.raises(ValueError):
        auroc_matrix(acts, labels + 1)


@pytest.mark.slow
def test_auroc_speed_4096_latents_100k_positions():
    g = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(100_000, 4096, generator=g) - 2.0)  # ~2% active, like SAE latents
    labels = torch.randint(0, 3, (100_000, 64), generator=g).numpy().astype(np.uint8)
    t = time.perf_counter()
    auc = auroc_matrix(acts, labels)
    assert time.perf_counter() - t < 60
    assert auc.shape == (4096, 192) and abs(float(auc.nanmean()) - 0.5) < 0.01
