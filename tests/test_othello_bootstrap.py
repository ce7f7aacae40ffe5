"""Game-bootstrap intervals of the good-classifier counts against exact AUROC."""

import numpy as np
import pytest
import torch

from saelab.sources.othello.auroc import GOOD_AUROC, auroc_columns, pair_indicators
from saelab.sources.othello.bootstrap import _auroc_from_counts, _bin_column, good_count_intervals


def _synthetic(n_games=150, per_game=20, seed=0, noise=(0.3, 1.0, 3.0)):
    """Random boards; latent i tracks pair i's indicator under growing noise, so some pairs are good, some borderline."""
    rng = np.random.default_rng(seed)
    n = n_games * per_game
    labels = rng.integers(0, 3, size=(n, 64))
    target = pair_indicators(labels).numpy()
    cols = []
    for i, s in enumerate(noise * 8):
        cols.append(np.maximum(target[:, i] + s * rng.standard_normal(n), 0.0))  # ReLU-like: ties at zero
    codes = torch.tensor(np.stack(cols, 1), dtype=torch.float32)
    games = np.repeat(np.arange(n_games), per_game)
    return codes, labels, games, target


def _exact_auroc(codes, target):
    L = codes.shape[1]
    out = torch.zeros(L, 192)
    for j in range(L):
        out[j] = auroc_columns(codes[:, j : j + 1].expand(-1, 192), torch.as_tensor(target))
    return out


def test_binned_auroc_equals_the_exact_one_when_bins_separate_every_value():
    rng = np.random.default_rng(1)
    v = np.maximum(rng.standard_normal(300), 0)
    t = rng.random(300) < 0.4
    b = _bin_column(v, 10_000)
    pos = np.bincount(b[t], minlength=b.max() + 1)
    neg = np.bincount(b[~t], minlength=b.max() + 1)
    exact = auroc_columns(torch.tensor(v)[:, None].float(), torch.tensor(t)[:, None].float())[0].item()
    assert _auroc_from_counts(pos, neg) == pytest.approx(exact, abs=1e-6)


def test_intervals_are_centred_on_the_exact_count_and_contain_it():
    codes, labels, games, target = _synthetic()
    auc = _exact_auroc(codes, target)
    findable = np.zeros((64, 3), dtype=bool)
    findable.reshape(-1)[:12] = True
    out = good_count_intervals(codes, labels, games, auc, findable, n_boot=300)
    exact_good = int((auc >= GOOD_AUROC).any(0).sum())
    g = out["good_classifiers"]
    assert g["estimate"] == exact_good and g["lo"] <= exact_good <= g["hi"]
    assert g["n"] == 150 and g["method"] == "bootstrap-games"
    f = out["good_findable"]
    assert f["estimate"] == int(((auc >= GOOD_AUROC).any(0).numpy() & findable.reshape(-1)).sum())
    # Pairs whose latent has AUROC near 0.9 make the count uncertain; clear ones do not.
    borderline = int(((auc.max(0).values > 0.85) & (auc.max(0).values < 0.95)).sum())
    assert g["hi"] - g["lo"] <= 2 * borderline + 1


@pytest.mark.slow  # 24 s in the default run (2 cores, loaded): kept out of it to hold that run under 10 minutes
def test_more_games_give_a_narrower_interval():
    widths = []
    for n_games in (40, 640):
        codes, labels, games, target = _synthetic(n_games=n_games, noise=(0.55, 0.6, 0.65))
        out = good_count_intervals(codes, labels, games, _exact_auroc(codes, target), np.ones((64, 3), bool), n_boot=300)
        widths.append(out["good_classifiers"]["hi"] - out["good_classifiers"]["lo"])
    assert widths[1] < widths[0]
