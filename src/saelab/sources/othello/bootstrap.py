"""Pieces of the game bootstrap of AUROC counts, and the findable pairs.

Positions of one game are correlated, so the unit resampled is the game. Recomputing AUROC
[latents × 192] for every replicate would cost a full score each time; instead only candidate
(latent, pair) columns are redone (crossfit.py picks them). Each candidate column is binned once
(a bin for the column's minimum, quantile bins for the rest) and summed per game, so a
replicate's AUROC is a weighted Mann–Whitney statistic from bin counts: one matrix product
W[R, games] @ counts[games, bins] for all columns at once. Within-bin ties count one half, so a
binned AUROC differs from the exact one by a little; the caller shifts each replicate by the exact
minus the binned full-sample value.
"""

from __future__ import annotations

import numpy as np
import torch

from saelab.sources.othello.auroc import GOOD_AUROC, N_PAIRS, auroc_columns, pair_indicators
from saelab.sources.othello.probes import ProbeConfig, fit_probe

N_BOOT = 200


def _bin_column(v: np.ndarray, bins: int) -> np.ndarray:
    """Bin ids of one column: 0 for its minimum (the code's zeros), quantile bins above it."""
    low = v.min()
    rest = v[v > low]
    ids = np.zeros(len(v), dtype=np.int64)
    if rest.size:
        edges = np.unique(np.quantile(rest, np.linspace(0, 1, bins)[1:-1]))
        ids[v > low] = 1 + np.searchsorted(edges, rest, side="right")
    return ids


def _auroc_from_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC per row from bin counts [..., B] (bins in increasing value order; ties count 1/2)."""
    below = np.cumsum(neg, axis=-1) - neg
    u = (pos * (below + 0.5 * neg)).sum(axis=-1)
    denom = pos.sum(axis=-1) * neg.sum(axis=-1)
    return np.where(denom > 0, u / np.where(denom > 0, denom, 1), np.nan)


def findable_on_positions(acts: np.ndarray, labels: np.ndarray, games: np.ndarray, seed: int = 0) -> np.ndarray:
    """Bool [64, 3]: pairs a linear probe classifies at AUROC ≥ 0.9 on these very positions.

    Two-fold cross-fitting by game (probe fitted on one half of the games, scored on the other,
    and back), so every position is scored by a probe that never saw its game.
    """
    x = torch.from_numpy(np.asarray(acts, dtype=np.float32))
    _, game_idx = np.unique(np.asarray(games), return_inverse=True)
    fold = torch.from_numpy((game_idx % 2).astype(bool))
    probs = torch.empty(len(x), N_PAIRS)
    cfg = ProbeConfig(seed=seed)
    for held in (False, True):
        train, test = fold != held, fold == held
        mu, sd = x[train].mean(0), x[train].std(0).clamp(min=1e-6)
        with torch.enable_grad():
            probe = fit_probe((x[train] - mu) / sd, labels[train.numpy()], cfg)
        with torch.no_grad():
            probs[test] = probe((x[test] - mu) / sd).view(-1, 64, 3).softmax(-1).reshape(-1, N_PAIRS)
    auc = auroc_columns(probs, pair_indicators(labels)).numpy().reshape(64, 3)
    return np.nan_to_num(auc, nan=0.0) >= GOOD_AUROC
