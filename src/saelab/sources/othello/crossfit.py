"""Cross-fitted board-state counts: each pair's best latent is chosen on one half of the games and scored on the other.

The naive good-classifier count picks each pair's best latent and scores it on the same games, so it
is a maximum of noisy AUROCs: a code with several near-duplicate latents for a pair gets several
draws and gains from the selection alone. Here the games are split in two halves (alternate game
ids); each pair's latent (for coverage: its latent and threshold) is chosen on half A and scored on
half B, then the other way, and the two counts are averaged. Under the null of near-duplicate
latents the choice is independent of the scoring games, so duplicates add nothing in expectation.

The evaluation's own noise is a game bootstrap of the same procedure, stratified by half (each half's
games resampled within it, so the two halves stay disjoint). Only candidate columns are redone: per
pair the CANDIDATES best latents of each half that reach CANDIDATE_AUROC on either half (a
replicate's choice on a half stays among that half's leaders in all but rare resamples), binned once and summed per game as in bootstrap.py, so a
replicate is one matrix product per half. Coverage's candidates are each pair's best (latent,
threshold) classifiers of each half with the threshold fixed from that half's full sample; its
replicates are exact sums of per-game true/predicted positives.
"""

from __future__ import annotations

import numpy as np
import torch

from saelab.errors import DataError
from saelab.sources.othello.auroc import (
    F1_CHUNK,
    GOOD_AUROC,
    KARVONEN_FRACTIONS,
    N_PAIRS,
    auroc_matrix,
    f1_chunks,
    pair_indicators,
)
from saelab.sources.othello.bootstrap import N_BOOT, _auroc_from_counts, _bin_column
from saelab.sources.othello.codes import DenseCodes, SparseCodes, as_codes
from saelab.util.intervals import Interval

CANDIDATES = 3  # per pair and half
CANDIDATE_AUROC = 0.8  # a pair whose candidates all sit below this on both halves is never good in a resample
BINS = 64  # the replicate AUROCs only feed a spread; each is re-centred on its exact value
COLUMN_CHUNK = 32  # candidate columns binned at once: bounds the [chunk, games, bins] count arrays
METHOD = "crossfit-2fold-games"


def game_halves(games: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(half [P] bool, game index [P], number of games): alternate distinct game ids go to half True."""
    _, game_idx = np.unique(np.asarray(games), return_inverse=True)
    n_games = int(game_idx.max()) + 1 if game_idx.size else 0
    if n_games < 2:
        raise DataError(f"games: the cross-fitted counts need at least 2 distinct games, got {n_games}")
    return game_idx % 2 == 1, game_idx, n_games


def _stratified_weights(game_idx: np.ndarray, half: np.ndarray, n_games: int, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap weights [R, G]: each half's games resampled with replacement within that half."""
    rng = np.random.default_rng(seed)
    game_half = np.zeros(n_games, dtype=bool)
    game_half[game_idx[half]] = True
    w = np.zeros((n_boot, n_games))
    for h in (False, True):
        members = np.flatnonzero(game_half == h)
        w[:, members] = rng.multinomial(len(members), np.full(len(members), 1.0 / len(members)), size=n_boot)
    return w


def _choice(auc: torch.Tensor) -> np.ndarray:
    """Index of each pair's best latent in auroc [L, 192] (NaN never wins)."""
    return torch.nan_to_num(auc.double(), nan=-np.inf).argmax(0).numpy()


def _good(auc: torch.Tensor, latent: np.ndarray) -> np.ndarray:
    """Bool [192]: whether each pair's given latent reaches GOOD_AUROC in auroc [L, 192]."""
    vals = auc.double()[torch.as_tensor(latent), torch.arange(N_PAIRS)].numpy()
    return np.nan_to_num(vals, nan=0.0) >= GOOD_AUROC


def _summary(point: float, reps: np.ndarray | None, n_games: int, level: float) -> tuple[float | None, dict]:
    """(standard error, Interval dict) of a cross-fitted statistic from its bootstrap replicates."""
    if reps is None or len(reps) < 2:
        return None, Interval(point, float("nan"), float("nan"), n_games, METHOD).to_dict()
    lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(np.std(reps, ddof=1)), Interval(
        point, float(lo), float(hi), n_games, f"bootstrap-games-{METHOD}"
    ).to_dict()


def crossfit_good_counts(
    codes,
    labels: np.ndarray,
    games: np.ndarray,
    findable: np.ndarray | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Cross-fitted good_classifiers and good_findable (floats: the mean of the two directions).

    Returns {"good_classifiers", "good_findable", "<name>_eval_se" (None without a bootstrap),
    "ci": {name: Interval dict}}. `findable` is a bool [192] or [64, 3] mask (None: every pair).
    """
    x = as_codes(codes)
    labels = np.asarray(labels)
    half, game_idx, n_games = game_halves(games)
    mask = np.ones(N_PAIRS, bool) if findable is None else np.asarray(findable).reshape(-1).astype(bool)
    auc = [
        auroc_matrix(x.select_rows(~half), labels[~half]),
        auroc_matrix(x.select_rows(half), labels[half]),
    ]  # [L, 192] on halves A, B
    choice = [_choice(a) for a in auc]
    # Direction h: chosen on half h, scored on the other.
    good = [_good(auc[1 - h], choice[h]) for h in (0, 1)]
    points = {
        "good_classifiers": (good[0].sum() + good[1].sum()) / 2,
        "good_findable": ((good[0] & mask).sum() + (good[1] & mask).sum()) / 2,
    }
    reps = _good_replicates(x, labels, game_idx, half, n_games, auc, good, n_boot, seed) if n_boot else None
    out: dict = {"ci": {}}
    for name, m in (("good_classifiers", np.ones(N_PAIRS, bool)), ("good_findable", mask)):
        r = None if reps is None else ((reps[0] & m).sum(1) + (reps[1] & m).sum(1)) / 2
        out[name] = float(points[name])
        out[f"{name}_eval_se"], out["ci"][name] = _summary(float(points[name]), r, n_games, level)
    return out


def _good_replicates(x, labels, game_idx, half, n_games, auc, good, n_boot, seed) -> list[np.ndarray]:
    """Per direction, bool [R, 192]: whether the pair is good in each stratified game-bootstrap replicate."""
    a = [torch.nan_to_num(t.double(), nan=0.0).numpy() for t in auc]
    top = [np.argsort(-t, axis=0, kind="stable")[:CANDIDATES] for t in a]  # [C, 192] per half
    reps = [np.repeat(good[h][None], n_boot, 0) for h in (0, 1)]  # pairs without candidates keep their point value
    cols: list[tuple[int, int]] = []  # (latent, pair)
    spans: dict[int, tuple[int, int]] = {}
    for p in range(N_PAIRS):
        cand = np.unique(np.concatenate([top[0][:, p], top[1][:, p]]))
        # A latent below CANDIDATE_AUROC on both halves neither wins a resample's choice nor reaches GOOD_AUROC.
        cand = cand[np.maximum(a[0][cand, p], a[1][cand, p]) >= CANDIDATE_AUROC]
        if not cand.size:
            continue
        spans[p] = (len(cols), len(cols) + len(cand))
        cols += [(int(l), p) for l in cand]
    if not cols:
        return reps
    w = _stratified_weights(game_idx, half, n_games, n_boot, seed)
    rep_auc = np.empty((2, n_boot, len(cols)))  # replicate AUROC on half A / B of every candidate column
    target = pair_indicators(labels).numpy().astype(bool)
    game_half = np.zeros(n_games, dtype=bool)
    game_half[game_idx[half]] = True
    for start in range(0, len(cols), COLUMN_CHUNK):
        chunk = cols[start : start + COLUMN_CHUNK]
        pos = np.zeros((len(chunk), n_games, BINS + 1))
        neg = np.zeros_like(pos)
        dense = x.columns([l for l, _ in chunk]).numpy()  # [P, chunk]: a few columns at a time
        for c, (l, p) in enumerate(chunk):
            key = game_idx * (BINS + 1) + _bin_column(dense[:, c], BINS)
            t = target[:, p]
            pos[c] = np.bincount(key[t], minlength=n_games * (BINS + 1)).reshape(n_games, BINS + 1)
            neg[c] = np.bincount(key[~t], minlength=n_games * (BINS + 1)).reshape(n_games, BINS + 1)
        for h in (0, 1):
            g = game_half == bool(h)
            ph, nh = pos[:, g], neg[:, g]  # [c, G_h, B]
            flat_p = ph.transpose(1, 0, 2).reshape(g.sum(), -1)
            flat_n = nh.transpose(1, 0, 2).reshape(g.sum(), -1)
            rep = _auroc_from_counts(
                (w[:, g] @ flat_p).reshape(n_boot, len(chunk), -1), (w[:, g] @ flat_n).reshape(n_boot, len(chunk), -1)
            )
            binned = _auroc_from_counts(ph.sum(1), nh.sum(1))
            exact = np.array([a[h][l, p] for l, p in chunk])
            rep_auc[h, :, start : start + len(chunk)] = rep + (exact - binned)  # centre on the exact half AUROC
    rep_auc = np.nan_to_num(rep_auc, nan=-np.inf)
    for p, (s, e) in spans.items():
        for h in (0, 1):
            pick = rep_auc[h, :, s:e].argmax(1)  # chosen on half h in each replicate
            scored = rep_auc[1 - h, :, s:e][np.arange(n_boot), pick]
            reps[h][:, p] = scored >= GOOD_AUROC
    return reps


def _half_f1_candidates(
    x: SparseCodes | DenseCodes, labels: np.ndarray, fr: torch.Tensor, k: int, chunk: int = F1_CHUNK
):
    """Each pair's k best (latent, threshold) classifiers on these positions: (latents [k, 192], thresholds [k, 192], F1 [k, 192])."""
    top = x.col_max()
    best_f1 = torch.full((0, N_PAIRS), -1.0)
    best_lat = torch.zeros((0, N_PAIRS), dtype=torch.long)
    best_fr = torch.zeros((0, N_PAIRS), dtype=torch.long)
    nf = fr.numel()
    for start, f1 in f1_chunks(x, labels, fr, chunk):
        K = f1.shape[0]
        flat = f1.reshape(K * nf, N_PAIRS).float()
        lat = (start + torch.arange(K).repeat_interleave(nf)).unsqueeze(1).expand(-1, N_PAIRS)
        fid = torch.arange(nf).repeat(K).unsqueeze(1).expand(-1, N_PAIRS)
        all_f1 = torch.cat([best_f1, flat])
        keep = torch.topk(all_f1, min(k, all_f1.shape[0]), dim=0).indices  # [k, 192]
        best_f1 = all_f1.gather(0, keep)
        best_lat = torch.cat([best_lat, lat]).gather(0, keep)
        best_fr = torch.cat([best_fr, fid]).gather(0, keep)
    # A latent never above 0 on these positions classifies nothing here, so it must fire nowhere on the other half either.
    m = top[best_lat]
    return best_lat, torch.where(m > 0, fr[best_fr] * m, torch.full_like(m, float("inf"))), best_f1


def _classifier_counts(
    x: SparseCodes | DenseCodes,
    target: np.ndarray,
    game_idx: np.ndarray,
    n_games: int,
    latents: torch.Tensor,
    thresholds: torch.Tensor,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-game (true positives, predicted positives) [G, k, 192] of the classifiers "x[:, latent] > threshold" for each pair."""
    k = latents.shape[0]
    # Thresholds are >= 0, so only stored entries can fire: gather the k · 192 classifiers' columns at once.
    which, rows, values = x.entries_of(latents.reshape(-1))
    fire = values > thresholds.reshape(-1)[which]
    c, r = which[fire].numpy(), rows[fire].numpy()  # classifier i · 192 + pair, position
    key = game_idx[r] * (k * N_PAIRS) + c
    size = n_games * k * N_PAIRS
    pred = np.bincount(key, minlength=size).reshape(n_games, k, N_PAIRS).astype(np.float64)
    tp = np.bincount(key[target[r, c % N_PAIRS]], minlength=size).reshape(n_games, k, N_PAIRS).astype(np.float64)
    return tp, pred


def _weighted_f1(w: np.ndarray, games: np.ndarray, tp: np.ndarray, pred: np.ndarray, npos: np.ndarray):
    """(F1 [R, k, 192], positives [R, 192]) of the candidates on the selected games under game weights w [R, G]."""
    t = np.einsum("rg,gkp->rkp", w[:, games], tp[games])
    pr = np.einsum("rg,gkp->rkp", w[:, games], pred[games])
    pos = w[:, games] @ npos[games]
    return 2 * t / np.maximum(pr + pos[:, None], 1e-12), pos


def crossfit_coverage(
    codes,
    labels: np.ndarray,
    games: np.ndarray,
    fractions=KARVONEN_FRACTIONS,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Cross-fitted Karvonen coverage: each pair's (latent, threshold) chosen by F1 on one half, its F1 taken on the other.

    A threshold is a fraction of the latent's maximum on the choosing half. Each direction averages
    over the pairs that occur in its scoring half; the result is the mean of the two directions.
    Returns {"coverage", "coverage_eval_se", "ci": {"coverage": Interval dict}}.
    """
    x = as_codes(codes)
    labels = np.asarray(labels)
    half, game_idx, n_games = game_halves(games)
    fr = torch.tensor(sorted(float(f) for f in fractions))
    if fr.numel() == 0 or fr[0] < 0 or fr[-1] >= 1:
        raise ValueError(f"fractions={list(fractions)}: need at least one, each in [0, 1)")
    target = pair_indicators(labels).numpy().astype(bool)
    npos = np.stack(
        [np.bincount(game_idx, weights=target[:, p], minlength=n_games) for p in range(N_PAIRS)], 1
    )  # [G, 192]
    game_half = np.zeros(n_games, dtype=bool)
    game_half[game_idx[half]] = True
    k = CANDIDATES if n_boot else 1
    counts = []  # per choosing half: (tp, pred) [G, k, 192] of its candidates on every game
    for h in (0, 1):
        sel = half if h else ~half
        lat, thr, _ = _half_f1_candidates(x.select_rows(sel), labels[sel], fr, k)
        counts.append(_classifier_counts(x, target, game_idx, n_games, lat, thr))

    def stat(w: np.ndarray) -> np.ndarray:
        """Cross-fitted coverage under game weights w [R, G]."""
        total = np.zeros(len(w))
        for h in (0, 1):
            choose, score = game_half == bool(h), game_half != bool(h)
            f1_choose, _ = _weighted_f1(w, choose, *counts[h], npos)
            pick = f1_choose.argmax(1)  # [R, 192]
            f1_score, pos_score = _weighted_f1(w, score, *counts[h], npos)
            scored = np.take_along_axis(f1_score, pick[:, None], 1)[:, 0]  # [R, 192]
            present = pos_score > 0
            total += np.where(present, scored, 0.0).sum(1) / np.maximum(present.sum(1), 1)
        return total / 2

    point = float(stat(np.ones((1, n_games)))[0])
    reps = stat(_stratified_weights(game_idx, half, n_games, n_boot, seed)) if n_boot else None
    se, ci = _summary(point, reps, n_games, level)
    return {"coverage": point, "coverage_eval_se": se, "ci": {"coverage": ci}}
