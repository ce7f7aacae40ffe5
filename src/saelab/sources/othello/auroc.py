"""Board-state metrics of latents: rank-based AUROC, good classifiers and Karvonen coverage.

A (square, state) pair has index ``pair = 3 * square + state`` with state 0 empty, 1 mine,
2 theirs (the labels of ``games.board_states``), so there are 192 pairs. AUROC is taken in
the positive direction only: a latent is a good classifier of a pair when it is *higher*
where the pair holds (AUROC >= 0.9). Pairs that never hold (or always hold) in the data,
such as "centre square empty", have AUROC NaN and never count as found.
"""

from __future__ import annotations

import numpy as np
import torch

N_PAIRS = 192
GOOD_AUROC = 0.9
DENSE_FRACTION = 0.6  # above this share of non-minimum entries a per-column sort beats the flat one
KARVONEN_FRACTIONS = tuple(i / 10 for i in range(10))  # thresholds as fractions of max activation


def pair_indicators(labels) -> torch.Tensor:
    """One-hot float32 [P, 192] of labels [P, 64] in {0,1,2}; column 3*square+state."""
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if lab.ndim != 2 or lab.shape[1] != 64:
        raise ValueError(f"labels.shape={tuple(lab.shape)}: expected [P, 64]")
    if lab.numel() and (lab.min() < 0 or lab.max() > 2):
        raise ValueError("labels: values must be 0 (empty), 1 (mine) or 2 (theirs)")
    return torch.nn.functional.one_hot(lab, 3).reshape(lab.shape[0], N_PAIRS).float()


def _sortable_key(v: torch.Tensor) -> torch.Tensor:
    """Map float32 values to int64 keys in [0, 2**32) with the same order (no NaN)."""
    bits = v.contiguous().view(torch.int32)
    # Flip the magnitude bits of negatives so that signed-int order equals float order.
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).long() + 2**31


def centered_ranks(x: torch.Tensor) -> torch.Tensor:
    """Tie-averaged ranks minus (P+1)/2 down each column of x [P, K] (float32 unless P > 2**22).

    Elements equal to their column's minimum (the zeros of a ReLU latent) share one rank that
    is known without sorting; only the rest are sorted, in one flat sort keyed by (column,
    value), so sparse latents cost little more than their non-zero entries.
    """
    x = x.float().contiguous()
    if torch.isnan(x).any():
        raise ValueError("acts: contains NaN")
    P, K = x.shape
    dtype = torch.float32 if P <= 2**22 else torch.float64  # centred half-integers stay exact
    mid = (P + 1) / 2
    base = x.amin(dim=0, keepdim=True)  # amin: min(dim) also builds indices, ~10x slower here
    if torch.isnan(base).any():  # amin propagates NaN, so this checks every element
        raise ValueError("acts: contains NaN")
    above = x > base
    if above.sum() > DENSE_FRACTION * P * K:
        return _dense_centered_ranks(x, dtype)
    rows, cols = above.nonzero(as_tuple=True)
    n_above = torch.bincount(cols, minlength=K)  # faster than summing the bool matrix
    n_base = P - n_above
    out = ((n_base.to(torch.float64) + 1) / 2 - mid).to(dtype).unsqueeze(0).expand(P, K).clone()
    if rows.numel() == 0:
        return out
    vals = x[rows, cols]
    order = torch.sort((cols << 32) | _sortable_key(vals)).indices
    r, c, v = rows[order], cols[order], vals[order]
    M = r.numel()
    g = torch.arange(M)
    first = torch.ones(M, dtype=torch.bool)
    first[1:] = (c[1:] != c[:-1]) | (v[1:] != v[:-1])
    last = torch.ones_like(first)
    last[:-1] = first[1:]
    # Each tie group spans flat positions [start, end]; carry its bounds along the sorted order.
    start = torch.cummax(torch.where(first, g, torch.zeros_like(g)), 0).values
    end = torch.where(last, g, torch.full_like(g, M)).flip(0).cummin(0).values.flip(0)
    col_off = torch.cumsum(n_above, 0) - n_above
    rank = (n_base - col_off)[c].to(torch.float64) + (start + end).to(torch.float64) / 2 + 1
    out[r, c] = (rank - mid).to(dtype)
    return out


def _dense_centered_ranks(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """centered_ranks for mostly non-minimum columns: a batched sort per column, then only the ties fixed."""
    P, K = x.shape
    s, idx = torch.sort(x.T.contiguous(), dim=1)  # [K, P]: rows sort in parallel, unlike one flat sort
    rank = (torch.arange(P, dtype=dtype) - (P - 1) / 2).repeat(K)  # flat [K * P]; untied: position - centre
    # Tied neighbours, as flat indices of the left one; a run of consecutive indices is one tie group
    # (runs cannot cross rows: the last left index of a row is P - 2 below the next row's first).
    left = (s[:, 1:] == s[:, :-1]).nonzero(as_tuple=True)
    if left[0].numel():
        flat = left[0] * P + left[1]
        opens = torch.ones_like(flat, dtype=torch.bool)
        opens[1:] = flat[1:] != flat[:-1] + 1
        closes = torch.ones_like(opens)
        closes[:-1] = opens[1:]
        first, last = flat[opens], flat[closes] + 1  # each group spans flat[first..last]
        mean = ((first + last).to(torch.float64) / 2 - (first // P) * P - (P - 1) / 2).to(dtype)
        group = torch.cumsum(opens, 0) - 1
        rank[flat] = mean[group]
        rank[last] = mean
    out = torch.empty(K, P, dtype=dtype)
    out.scatter_(1, idx, rank.view(K, P))
    return out.T


def average_ranks(x) -> torch.Tensor:
    """Ranks (1..P) of each column of x [P, K] as float64, ties given the mean of their ranks."""
    x = torch.as_tensor(x)
    return centered_ranks(x).to(torch.float64) + (x.shape[0] + 1) / 2


def auroc_matrix(acts, labels, chunk: int = 256) -> torch.Tensor:
    """AUROC [L, 192] of every latent of acts [P, L] against every (square, state) indicator."""
    a = torch.as_tensor(acts)
    if a.ndim != 2:
        raise ValueError(f"acts.shape={tuple(a.shape)}: expected [P, L]")
    y = pair_indicators(labels)
    if y.shape[0] != a.shape[0]:
        raise ValueError(f"acts rows={a.shape[0]} != labels rows={y.shape[0]}")
    P = a.shape[0]
    n_pos = y.sum(0).double()
    n_neg = P - n_pos
    # With centred ranks, AUROC = 0.5 + sum_{positives}(rank - (P+1)/2) / (n_pos * n_neg), and
    # the matmul's partial sums stay small enough for float32.
    out = torch.empty(a.shape[1], N_PAIRS, dtype=torch.float64)
    for i in range(0, a.shape[1], chunk):
        r = centered_ranks(a[:, i : i + chunk])
        out[i : i + chunk] = (r.T @ y.to(r.dtype)).double()
    denom = n_pos * n_neg
    auc = 0.5 + out / denom
    auc[:, denom == 0] = float("nan")
    return auc.float()


def auroc_columns(scores, targets) -> torch.Tensor:
    """AUROC [K] of each score column [P, K] against the matching binary target column [P, K]."""
    s = torch.as_tensor(scores).float()
    t = torch.as_tensor(targets).double()
    P = s.shape[0]
    n_pos = t.sum(0)
    denom = n_pos * (P - n_pos)
    r = centered_ranks(s).double()
    auc = 0.5 + (r * t).sum(0) / denom
    auc[denom == 0] = float("nan")
    return auc.float()


def good_classifier_report(auroc, findable_mask=None, threshold: float = GOOD_AUROC) -> dict:
    """Count good classifiers in auroc [L, 192] (optionally against findable_mask [192] or [64, 3]).

    good_classifiers: distinct pairs with some latent at AUROC >= threshold (the report's count).
    good_classifier_latents: latents with AUROC >= threshold for at least one pair (counts
    duplicate latents for the same pair, as in the earlier report). findable: pairs the probes
    find (192 if no mask). *_frac: the counts divided by findable. good_findable: good pairs
    that are also findable. best_auroc: per pair, the best latent's AUROC (None if undefined).
    """
    auc = torch.as_tensor(auroc).float()
    if auc.ndim != 2 or auc.shape[1] != N_PAIRS:
        raise ValueError(f"auroc.shape={tuple(auc.shape)}: expected [L, 192]")
    good = torch.nan_to_num(auc, nan=0.0) >= threshold
    if findable_mask is None:
        findable = torch.ones(N_PAIRS, dtype=torch.bool)
    else:
        findable = torch.as_tensor(np.asarray(findable_mask)).reshape(-1).bool()
        if findable.numel() != N_PAIRS:
            raise ValueError(f"findable_mask size={findable.numel()}: expected 192")
    pair_good = good.any(0)
    n_findable = int(findable.sum())
    n_good = int(pair_good.sum())
    n_latents = int(good.any(1).sum())
    best = torch.nan_to_num(auc, nan=-1.0).max(0).values if auc.shape[0] else torch.full((N_PAIRS,), -1.0)
    return {
        "good_classifiers": n_good,
        "good_classifier_latents": n_latents,
        "findable": n_findable,
        "good_classifiers_frac": n_good / n_findable if n_findable else float("nan"),
        "good_classifier_latents_frac": n_latents / n_findable if n_findable else float("nan"),
        "good_findable": int((pair_good & findable).sum()),
        "good_pairs": [[p // 3, p % 3] for p in torch.nonzero(pair_good).flatten().tolist()],
        "best_auroc": [None if b < 0 else round(float(b), 6) for b in best],
    }


def f1_chunks(acts: torch.Tensor, labels, fr: torch.Tensor, chunk: int = 256):
    """Yield (first latent, F1 [K, len(fr), 192]) for chunks of latents of acts [P, L]: F1 of "act > f * max act" per pair.

    Latents that never exceed 0 classify nothing (F1 0).
    """
    a = torch.as_tensor(acts).float()
    y = pair_indicators(labels)
    if y.shape[0] != a.shape[0]:
        raise ValueError(f"acts rows={a.shape[0]} != labels rows={y.shape[0]}")
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n_pos = y.sum(0)
    nf = fr.numel()
    sq_off = 3 * torch.arange(64)
    for i in range(0, a.shape[1], chunk):
        x = a[:, i : i + chunk].contiguous()
        K = x.shape[1]
        top = x.amax(0) if x.shape[0] else torch.zeros(K)
        rows, cols = (x > 0).nonzero(as_tuple=True)
        # bin = how many thresholds an activation clears (>= 1 for any positive activation):
        # classifier j fires exactly on entries with bin > j, so TP_j is a suffix sum over bins.
        bins = (x[rows, cols].unsqueeze(1) > fr * top[cols].unsqueeze(1)).sum(1) - 1
        cell = cols * nf + bins
        hist = torch.zeros(K * nf * N_PAIRS, dtype=torch.long)
        # Each position holds exactly one state per square, so its indicator row is 64 ones:
        # counting (cell, pair) hits directly replaces a dense [P, 192] matmul per threshold.
        for j in range(0, rows.numel(), 500_000):
            idx = (cell[j : j + 500_000] * N_PAIRS).unsqueeze(1) + sq_off + lab[rows[j : j + 500_000]]
            hist += torch.bincount(idx.flatten(), minlength=K * nf * N_PAIRS)
        tp = hist.view(K, nf, N_PAIRS).flip(1).cumsum(1).flip(1).double()
        pred = torch.bincount(cell, minlength=K * nf).view(K, nf).flip(1).cumsum(1).flip(1).double()
        yield i, 2 * tp / (pred.unsqueeze(-1) + n_pos.double()).clamp(min=1)


def coverage(acts, labels, fractions=KARVONEN_FRACTIONS, pair_mask=None, chunk: int = 256) -> dict:
    """Karvonen et al. board-state coverage: mean over pairs of the best F1 of any (latent, threshold).

    Each latent l with max activation m_l > 0 (over the P positions) and each fraction f in
    `fractions` (default 0, 0.1, ..., 0.9; all in [0, 1)) gives the binary classifier
    "acts[:, l] > f * m_l"; latents that never exceed 0 classify nothing. For each (square,
    state) pair, F1 = 2 TP / (predicted positives + actual positives), and the pair's score is
    the best F1 over all latents and fractions. Coverage is the mean of these scores over pairs
    that occur in the data (and are in `pair_mask` [192] or [64, 3] if given). This is the naive
    (same-games) value; crossfit.crossfit_coverage chooses and scores on different games.
    Returns {"coverage", "best_f1" [192] (None where a pair is left out)}.
    """
    a = torch.as_tensor(acts).float()
    y = pair_indicators(labels)
    if y.shape[0] != a.shape[0]:
        raise ValueError(f"acts rows={a.shape[0]} != labels rows={y.shape[0]}")
    fr = torch.tensor(sorted(float(f) for f in fractions))
    if fr.numel() == 0 or fr[0] < 0 or fr[-1] >= 1:
        raise ValueError(f"fractions={list(fractions)}: need at least one, each in [0, 1)")
    n_pos = y.sum(0)
    best = torch.zeros(N_PAIRS)
    for _, f1 in f1_chunks(a, labels, fr, chunk):
        best = torch.maximum(best, f1.amax(dim=(0, 1)).float())
    present = n_pos > 0
    if pair_mask is not None:
        present &= torch.as_tensor(np.asarray(pair_mask)).reshape(-1).bool()
    cov = float(best[present].mean()) if present.any() else float("nan")
    return {"coverage": cov, "best_f1": [round(float(b), 6) if p else None for b, p in zip(best, present)]}
