"""Cross-fitted good-classifier counts and coverage: a hand-computed case, and no gain from duplicate latents."""

import numpy as np
import pytest
import torch

from saelab.errors import DataError
from saelab.sources.othello.auroc import (
    auroc_matrix,
    coverage,
    good_classifier_report,
    pair_indicators,
)
from saelab.sources.othello.crossfit import crossfit_coverage, crossfit_good_counts


def _hand_case():
    """8 games of 2 positions; square 0 is "mine" at each game's first position, empty at its second.

    Half A holds the even games, half B the odd ones (4 positives, 4 negatives each, so AUROC steps by 1/16).
    Latent 0: A pos {10,11,12,13} neg {0,1,2,3} → 1; B pos {10,11,12,4} neg {0,1,5,6} → 14/16 = 0.875.
    Latent 1: A pos {10,11,12,4} neg {0,1,2,5} → 15/16 = 0.9375; B pos {10..13} neg {0..3} → 1.
    Every cross-half comparison is a win, so on all 16 positions latent 0 has 62/64 and latent 1 63/64.
    """
    lat0 = {"A": ([10, 11, 12, 13], [0, 1, 2, 3]), "B": ([10, 11, 12, 4], [0, 1, 5, 6])}
    lat1 = {"A": ([10, 11, 12, 4], [0, 1, 2, 5]), "B": ([10, 11, 12, 13], [0, 1, 2, 3])}
    codes, labels, games = [], [], []
    for g in range(8):
        h, i = ("A", "B")[g % 2], g // 2
        for first, k in ((True, 0), (False, 1)):
            codes.append([lat0[h][k][i], lat1[h][k][i]])
            row = np.zeros(64, dtype=np.int64)
            row[0] = 1 if first else 0
            labels.append(row)
            games.append(g)
    return torch.tensor(codes, dtype=torch.float32), np.array(labels), np.array(games)


def test_hand_computed_case():
    codes, labels, games = _hand_case()
    auc = auroc_matrix(codes, labels)
    assert auc[0, 1].item() == pytest.approx(62 / 64) and auc[1, 1].item() == pytest.approx(63 / 64)
    # Same games: pair (square 0, mine) has a latent above 0.9, so the naive count is 1.
    assert good_classifier_report(auc)["good_classifiers"] == 1
    # Chosen on A: latent 0 (1 > 0.9375), scored on B: 0.875, not good. Chosen on B: latent 1 (1 > 0.875),
    # scored on A: 0.9375, good. The other pairs never reach 0.9 (square 0 empty: 1 − the above) or never vary.
    out = crossfit_good_counts(codes, labels, games, n_boot=0)
    assert out["good_classifiers"] == 0.5 and out["good_classifiers_eval_se"] is None
    findable = np.ones(192, dtype=bool)
    findable[1] = False
    assert crossfit_good_counts(codes, labels, games, findable, n_boot=0)["good_findable"] == 0.0
    boot = crossfit_good_counts(codes, labels, games, n_boot=200)
    assert boot["good_classifiers"] == 0.5 and boot["good_classifiers_eval_se"] > 0
    ci = boot["ci"]["good_classifiers"]
    assert 0 <= ci["lo"] <= ci["hi"] <= 1 and ci["n"] == 8


def test_crossfit_coverage_hand_case():
    # One latent: on half A (games 0, 2) it fires (> 0) exactly where square 0 is "mine"; on half B it fires everywhere.
    labels = np.zeros((8, 64), dtype=np.int64)
    labels[::2, 0] = 1  # the first position of each game
    games = np.repeat(np.arange(4), 2)
    codes = torch.tensor([[1.0], [0.0], [1.0], [1.0], [1.0], [0.0], [1.0], [1.0]])
    out = crossfit_coverage(codes, labels, games, fractions=(0.0,), n_boot=0)
    # 65 pairs occur: (0, mine), (0, empty) and the 63 always-empty squares; F1 = 2 TP / (fired + positives).
    # Chosen on A, scored on B (fires on 4 of 4): (0, mine) 2·2/(4+2), (0, empty) 2·2/(4+2), each other square 2·4/(4+4).
    # Chosen on B, scored on A (fires on 2 of 4): (0, mine) 2·2/(2+2), (0, empty) 0, each other square 2·2/(2+4).
    a_to_b = (2 / 3 + 2 / 3 + 63 * 1.0) / 65
    b_to_a = (1.0 + 0.0 + 63 * 2 / 3) / 65
    assert out["coverage"] == pytest.approx((a_to_b + b_to_a) / 2)
    # Same games (fires on 6 of 8): (0, mine) 2·4/(6+4), (0, empty) 2·2/(6+4), each other square 2·6/(6+8).
    assert coverage(codes, labels, fractions=(0.0,))["coverage"] == pytest.approx((0.8 + 0.4 + 63 * 6 / 7) / 65)


def test_one_game_is_refused():
    codes, labels, _ = _hand_case()
    with pytest.raises(DataError, match="games"):
        crossfit_good_counts(codes, labels, np.zeros(len(labels), dtype=int))


def _duplicates(seed: int, copies: int, n_games: int = 60, per_game: int = 20, squares: int = 32):
    """Codes whose latent c·P + p is copy c of pair p's latent: its indicator plus independent noise at population AUROC near 0.9."""
    rng = np.random.default_rng(seed)
    n = n_games * per_game
    labels = rng.integers(0, 3, size=(n, 64))
    labels[:, squares:] = 0
    y = pair_indicators(labels).numpy()[:, : 3 * squares]
    s = np.linspace(0.5, 0.62, y.shape[1])[rng.permutation(y.shape[1])]  # AUROC Φ(1/(s√2)) ≈ 0.92 … 0.87
    x = np.maximum(y[:, None, :] + s * rng.standard_normal((n, copies, y.shape[1])), 0.0).reshape(n, -1)
    return torch.tensor(x, dtype=torch.float32), labels, np.repeat(np.arange(n_games), per_game)


def test_duplicate_latents_inflate_the_naive_count_but_not_the_cross_fitted_one():
    naive, crossfit = [], []
    for seed in range(6):
        codes, labels, games = _duplicates(seed, copies=4, n_games=40, squares=16)
        single = codes[:, :48]  # copy 0 alone: the same pairs, one latent each
        counts = []
        for c in (single, codes):
            counts.append(
                (
                    good_classifier_report(auroc_matrix(c, labels))["good_classifiers"],
                    crossfit_good_counts(c, labels, games, n_boot=0)["good_classifiers"],
                )
            )
        naive.append(counts[1][0] - counts[0][0])
        crossfit.append(counts[1][1] - counts[0][1])
    naive, crossfit = np.array(naive, float), np.array(crossfit, float)
    se = crossfit.std(ddof=1) / np.sqrt(len(crossfit))
    assert naive.mean() > 3 and naive.min() > 0  # the maximum over four draws gains pairs
    assert abs(crossfit.mean()) < 3 * se + 0.5, (crossfit.mean(), se)  # choosing on other games gains nothing
    assert naive.mean() > abs(crossfit.mean()) + 5 * se


def test_duplicate_latents_do_not_inflate_the_cross_fitted_coverage():
    naive, crossfit = [], []
    for seed in range(4):
        codes, labels, games = _duplicates(seed, copies=3, n_games=30, squares=8)
        single = codes[:, :24]
        pair = [
            (coverage(c, labels)["coverage"], crossfit_coverage(c, labels, games, n_boot=0)["coverage"])
            for c in (single, codes)
        ]
        naive.append(pair[1][0] - pair[0][0])
        crossfit.append(pair[1][1] - pair[0][1])
    naive, crossfit = np.array(naive), np.array(crossfit)
    se = crossfit.std(ddof=1) / np.sqrt(len(crossfit))
    assert naive.min() > 0  # every data set: the best of three draws beats one
    assert abs(crossfit.mean()) < 3 * se + 1e-3, (crossfit.mean(), se)


@pytest.mark.slow  # ~1 min on 2 loaded cores: 20 independent data sets and one bootstrap each
def test_eval_se_matches_the_spread_over_fresh_games():
    counts, ses = [], []
    for seed in range(20):
        codes, labels, games = _duplicates(100 + seed, copies=2, squares=16)
        out = crossfit_good_counts(codes, labels, games, n_boot=100, seed=seed)
        counts.append(out["good_classifiers"])
        ses.append(out["good_classifiers_eval_se"])
    sd = np.std(counts, ddof=1)
    # 20 draws give the sample sd to about ±16%; the bootstrap se must be of that size, not a fraction or a multiple.
    assert 0.6 * sd < np.mean(ses) < 1.6 * sd, (sd, np.mean(ses))
