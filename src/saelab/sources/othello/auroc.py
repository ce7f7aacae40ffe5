"""Board-state metrics of latents: rank-based AUROC, good classifiers and Karvonen coverage.

A (square, state) pair has index ``pair = 3 * square + state`` with state 0 empty, 1 mine,
2 theirs (the labels of ``games.board_states``), so there are 192 pairs. AUROC is taken in
the positive direction only: a latent is a good classifier of a pair when it is *higher*
where the pair holds (AUROC >= 0.9). Pairs that never hold (or always hold) in the data,
such as "centre square empty", have AUROC NaN and never count as found.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import torch

from saelab.sources.othello.codes import CHUNK_ENTRIES, DenseCodes, SparseCodes, as_codes

N_PAIRS = 192
GOOD_AUROC = 0.9
DENSE_FRACTION = 0.6  # above this share of non-minimum entries a per-column sort beats the flat one
KARVONEN_FRACTIONS = tuple(i / 10 for i in range(10))  # thresholds as fractions of max activation
F1_CHUNK = (
    2048  # latents per F1 block: [2048, 10, 192] float64 is 31 MB; 256-latent blocks cost 3x more time (measured)
)


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


def _within_column_ranks(codes: SparseCodes) -> torch.Tensor:
    """Rank (1-based, float64) of each stored entry among its column's stored entries, ties averaged."""
    cols = codes.entry_cols()
    order = torch.sort((cols << 32) | _sortable_key(codes.values)).indices
    c, v = cols[order], codes.values[order]
    M = c.numel()
    g = torch.arange(M)
    first = torch.ones(M, dtype=torch.bool)
    first[1:] = (c[1:] != c[:-1]) | (v[1:] != v[:-1])
    last = torch.ones_like(first)
    last[:-1] = first[1:]
    # Each tie group spans sorted positions [start, end]; carry its bounds along the sorted order.
    start = torch.cummax(torch.where(first, g, torch.zeros_like(g)), 0).values
    end = torch.where(last, g, torch.full_like(g, M)).flip(0).cummin(0).values.flip(0)
    rank = torch.empty(M, dtype=torch.float64)
    rank[order] = (start + end).to(torch.float64) / 2 + 1 - codes.col_ptr[:-1][c].to(torch.float64)
    return rank


def _dense_auroc_matrix(x: torch.Tensor, y: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """auroc_matrix of mostly non-zero codes x [P, L]: centred ranks of each column chunk times the indicators y [P, 192]."""
    P = x.shape[0]
    n_pos = y.sum(0).double()
    out = torch.empty(x.shape[1], N_PAIRS, dtype=torch.float64)
    for i in range(0, x.shape[1], chunk):
        r = centered_ranks(x[:, i : i + chunk])
        out[i : i + chunk] = (r.T @ y.to(r.dtype)).double()
    denom = n_pos * (P - n_pos)
    auc = 0.5 + out / denom
    auc[:, denom == 0] = float("nan")
    return auc.float()


def auroc_matrix(acts, labels) -> torch.Tensor:
    """AUROC [L, 192] of every latent of acts [P, L] (dense, or othello.codes.SparseCodes) against every (square, state) indicator.

    Only non-zero entries are ranked: a column's zeros share one tie-averaged rank r0, so the
    positives' centred rank sum is (r0 - mid) · n_pos + Σ over non-zero positives of (rank - r0),
    and each position has exactly 64 ones among the 192 indicators: O(non-zeros · 64), not O(P · L · 192).
    """
    codes = as_codes(acts)
    lab = np.asarray(labels)
    y = pair_indicators(lab)
    P, L = codes.shape
    if y.shape[0] != P:
        raise ValueError(f"acts rows={P} != labels rows={y.shape[0]}")
    if isinstance(codes, DenseCodes):
        return _dense_auroc_matrix(codes.x, y)
    n_pos = y.sum(0).double()
    n_stored = codes.col_ptr.diff()
    n_below = torch.bincount(codes.entry_cols()[codes.values < 0], minlength=L)
    r0 = n_below.double() + (P - n_stored + 1).double() / 2  # the zeros' shared rank
    cols = codes.entry_cols()
    # A positive entry ranks above every zero; a negative one below them all.
    rank = _within_column_ranks(codes) + torch.where(codes.values > 0, (P - n_stored)[cols], 0).double()
    weights = (rank - r0[cols]).numpy()
    by_latent = scipy.sparse.csr_matrix((weights, codes.rows.numpy(), codes.col_ptr.numpy()), shape=(L, P))
    s = np.empty((L, N_PAIRS))
    for state in range(3):  # pair 3·square + state: one sparse × dense product per state
        s[:, state::3] = by_latent @ (lab == state).astype(np.float64)
    n_neg = P - n_pos
    centred = torch.from_numpy(s) + (r0 - (P + 1) / 2).unsqueeze(1) * n_pos
    denom = n_pos * n_neg
    auc = 0.5 + centred / denom
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


def f1_chunks(acts, labels, fr: torch.Tensor, chunk: int = F1_CHUNK):
    """Yield (first latent, F1 [K, len(fr), 192]) for chunks of latents of acts [P, L] (dense or SparseCodes): F1 of "act > f * max act" per pair.

    Latents that never exceed 0 classify nothing (F1 0).
    """
    codes = as_codes(acts)
    lab = np.asarray(labels)
    y = pair_indicators(lab)
    P, L = codes.shape
    if y.shape[0] != P:
        raise ValueError(f"acts rows={P} != labels rows={y.shape[0]}")
    n_pos = y.sum(0)
    nf = fr.numel()
    y_np = y.numpy()
    if isinstance(codes, DenseCodes):  # turned sparse a block at a time
        chunk = max(1, min(chunk, CHUNK_ENTRIES // max(P, 1)))
    for i in range(0, L, chunk):
        K = min(chunk, L - i)
        block = codes.column_chunk(i, i + K)
        vals, rows, cols = block.values, block.rows, block.entry_cols()
        top = block.col_max()
        up = vals > 0
        vals, rows, cols = vals[up], rows[up], cols[up]
        # bin = how many thresholds an activation clears (>= 1 for any positive activation):
        # classifier j fires exactly on entries with bin > j, so TP_j is a suffix sum over bins.
        top_of = top[cols]
        bins = torch.full_like(cols, -1)
        for f in fr:  # one pass per threshold: a [n, len(fr)] bool matrix's row sums cost ~5x more
            bins += vals > f * top_of
        cell = (cols * nf + bins).numpy()
        # Hits per (cell, pair) as a sparse (cell × position) by dense indicator product: each
        # position's row holds 64 ones, so this is O(entries · 192) multiply-adds, no [P, K] matrix.
        hits = scipy.sparse.csr_matrix(
            (np.ones(len(cell), np.float32), (cell, rows.numpy())), shape=(K * nf, P)
        )  # float32 counts stay exact below 2**24 > P
        hist = torch.from_numpy(np.asarray(hits @ y_np)).to(torch.float64)
        tp = hist.view(K, nf, N_PAIRS).flip(1).cumsum(1).flip(1)
        pred = torch.bincount(torch.from_numpy(cell), minlength=K * nf).view(K, nf).flip(1).cumsum(1).flip(1).double()
        yield i, 2 * tp / (pred.unsqueeze(-1) + n_pos.double()).clamp(min=1)


def coverage(acts, labels, fractions=KARVONEN_FRACTIONS, pair_mask=None, chunk: int = F1_CHUNK) -> dict:
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
    a = as_codes(acts)
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
