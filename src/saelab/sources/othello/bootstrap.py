"""Intervals for the good-classifier counts: a bootstrap over games.

Positions of one game are correlated, so the unit resampled is the game. Recomputing AUROC
[latents × 192] for every replicate would cost a full score each time; instead only candidate
(latent, pair) columns are redone — each pair's CANDIDATES_PER_PAIR best latents with AUROC ≥
CANDIDATE_AUROC on the full sample (a pair whose best latent is far below 0.9 cannot cross it
in a resample of the same games; 0.8 leaves a wide margin). Each candidate column is binned
once (a bin for the column's minimum, quantile bins for the rest) and summed per game, so a
replicate's AUROC is a weighted Mann–Whitney statistic from bin counts: one matrix product
W[R, games] @ counts[games, bins] for all columns at once. Within-bin ties count one half, so a
binned AUROC differs from the exact one by a little; each replicate is shifted by the exact
minus the binned full-sample value, which centres the bootstrap on the reported count.
"""

from __future__ import annotations

import numpy as np
import torch

from saelab.util.intervals import Interval
from saelab.sources.othello.auroc import GOOD_AUROC, N_PAIRS, auroc_columns, pair_indicators
from saelab.sources.othello.probes import ProbeConfig, fit_probe

CANDIDATE_AUROC = 0.8
CANDIDATES_PER_PAIR = 4
BINS = 256
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


def good_count_intervals(codes: torch.Tensor, labels: np.ndarray, games: np.ndarray, auroc: torch.Tensor,
                         findable: np.ndarray, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> dict[str, dict]:
    """95% game-bootstrap intervals of good_classifiers and good_findable (Interval dicts)."""
    auc = torch.nan_to_num(torch.as_tensor(auroc).double(), nan=0.0).numpy()  # [L, 192]
    findable = np.asarray(findable).reshape(-1).astype(bool)
    order = np.argsort(-auc, axis=0)[:CANDIDATES_PER_PAIR]  # [c, 192] best latents per pair
    cols = [(int(l), p) for p in range(N_PAIRS) for l in order[:, p] if auc[l, p] >= CANDIDATE_AUROC]
    _, game_idx = np.unique(np.asarray(games), return_inverse=True)
    n_games = int(game_idx.max()) + 1
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_games, np.full(n_games, 1.0 / n_games), size=n_boot).astype(np.float64)  # [R, G]
    good = np.zeros((n_boot, N_PAIRS), dtype=bool)
    if cols:
        target = pair_indicators(labels).numpy().astype(bool)
        codes_np = codes.numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
        pos_counts = np.zeros((len(cols), n_games, BINS + 1))
        neg_counts = np.zeros_like(pos_counts)
        for c, (l, p) in enumerate(cols):
            b = _bin_column(codes_np[:, l], BINS)
            key = game_idx * (BINS + 1) + b
            t = target[:, p]
            pos_counts[c] = np.bincount(key[t], minlength=n_games * (BINS + 1)).reshape(n_games, BINS + 1)
            neg_counts[c] = np.bincount(key[~t], minlength=n_games * (BINS + 1)).reshape(n_games, BINS + 1)
        flat_pos = pos_counts.transpose(1, 0, 2).reshape(n_games, -1)
        flat_neg = neg_counts.transpose(1, 0, 2).reshape(n_games, -1)
        rep = _auroc_from_counts((weights @ flat_pos).reshape(n_boot, len(cols), -1), (weights @ flat_neg).reshape(n_boot, len(cols), -1))
        full = _auroc_from_counts(pos_counts.sum(1), neg_counts.sum(1))
        exact = np.array([auc[l, p] for l, p in cols])
        rep = rep + (exact - full)  # centre on the exact full-sample AUROC
        pairs = np.array([p for _, p in cols])
        hit = np.nan_to_num(rep, nan=0.0) >= GOOD_AUROC
        for p in np.unique(pairs):
            good[:, p] = hit[:, pairs == p].any(axis=1)
    point_good = (auc >= GOOD_AUROC).any(0)
    out = {}
    for name, mask in (("good_classifiers", np.ones(N_PAIRS, bool)), ("good_findable", findable)):
        counts = good[:, mask].sum(axis=1)
        lo, hi = np.quantile(counts, [(1 - level) / 2, 1 - (1 - level) / 2])
        out[name] = Interval(float(point_good[mask].sum()), float(lo), float(hi), n_games, "bootstrap-games").to_dict()
    return out


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
