"""Time the OthelloGPT testbed's two hot paths against plain references, in one process.

1. Game generation: the vectorized bitboard generator (`games.generate_games`) against the
   scalar reference engine (`engine.random_game`), in games per second.
2. The good-classifier metric: `auroc.auroc_matrix` (sparse-aware centred ranks, one matrix
   product per latent chunk) on 4,096 latents x 192 pairs x 100k positions, against the plain
   vectorized reference (scipy `rankdata` down every column, then the same product), which is
   timed on a slice of latents and scaled to all of them.

Labels are real board states of random games; activations are synthetic, either sparse (each
latent non-zero on a `--density` fraction of positions, as an SAE's are) or dense (leaky TopK).
Medians of `--reps`; ratios are reference time / our time. Usage:
    python bench/othello_speed.py [--games 20000] [--latents 4096] [--positions 100000] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch


def _median_time(fn, reps: int) -> float:
    """Median wall time of `reps` calls of fn."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_games(n: int, n_ref: int, reps: int) -> dict:
    """Games/s of the vectorized generator and of the scalar engine."""
    from saelab.sources.othello.engine import random_game
    from saelab.sources.othello.games import generate_games

    generate_games(min(n, 256), seed=0)  # warm-up
    fast = _median_time(lambda: generate_games(n, seed=1), reps)
    rng = np.random.default_rng(1)
    slow = _median_time(lambda: [random_game(rng) for _ in range(n_ref)], 1)
    fast_rate, slow_rate = n / fast, n_ref / slow
    return {
        "bench": "games",
        "games": n,
        "games_per_s": round(fast_rate),
        "reference_games_per_s": round(slow_rate, 1),
        "ratio": round(fast_rate / slow_rate, 1),
    }


def _synthetic_acts(positions: int, latents: int, density: float, seed: int) -> torch.Tensor:
    """Non-negative float32 [P, L]; a `density` fraction of each column non-zero (1.0: dense)."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.rand(positions, latents, generator=g)
    if density < 1.0:
        acts = torch.where(torch.rand(positions, latents, generator=g) < density, acts, torch.zeros(()))
    return acts


def _reference_auroc(acts: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUROC [L, 192] via scipy's tie-averaged ranks of every column (Mann-Whitney U / n+ n-)."""
    from scipy.stats import rankdata

    ranks = rankdata(acts, axis=0)
    n_pos = y.sum(0)
    u = ranks.T @ y - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return u / (n_pos * (len(y) - n_pos))


def bench_auroc(labels: np.ndarray, latents: int, density: float, ref_latents: int, reps: int) -> dict:
    """Seconds for auroc_matrix on all latents, and the scipy reference scaled from a slice."""
    from saelab.sources.othello.auroc import auroc_matrix, pair_indicators

    acts = _synthetic_acts(len(labels), latents, density, seed=0)
    ours = _median_time(lambda: auroc_matrix(acts, labels), reps)
    sl = acts[:, :ref_latents].numpy()
    y = pair_indicators(labels).double().numpy()
    ref_slice = _median_time(lambda: _reference_auroc(sl, y), 1)
    # Same answer on the slice, so the two timed paths compute the same thing.
    a = auroc_matrix(acts[:, :ref_latents], labels).double().numpy()
    b = _reference_auroc(sl, y)
    ok = np.isnan(a) == np.isnan(b)
    max_err = float(np.nanmax(np.abs(a - b))) if ok.all() else float("inf")
    ref = ref_slice * latents / ref_latents
    return {
        "bench": "auroc",
        "positions": len(labels),
        "latents": latents,
        "pairs": 192,
        "density": density,
        "seconds": round(ours, 2),
        "reference_seconds": round(ref, 1),
        "ratio": round(ref / ours, 1),
        "max_abs_diff": max_err,
    }


def main() -> None:
    """Run both benchmarks and print a table (or JSON lines)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--games", type=int, default=20_000, help="games per generator call")
    ap.add_argument("--ref-games", type=int, default=300, help="games for the scalar engine")
    ap.add_argument("--latents", type=int, default=4096)
    ap.add_argument("--positions", type=int, default=100_000)
    ap.add_argument("--density", type=float, default=0.02, help="non-zero fraction of each sparse latent")
    ap.add_argument("--ref-latents", type=int, default=256, help="latents the scipy reference is timed on")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from saelab.sources.othello.games import board_states, generate_games

    records = [bench_games(args.games, args.ref_games, args.reps)]
    games = generate_games(-(-args.positions // 50) + 100, seed=2)
    labels_all, _ = board_states(games)
    alive = games >= 0
    labels = labels_all[alive][: args.positions]
    for density in (args.density, 1.0):
        records.append(bench_auroc(labels, args.latents, density, args.ref_latents, args.reps))
    if args.json:
        for r in records:
            print(json.dumps(r))
        return
    g = records[0]
    print(
        f"games: {g['games_per_s']:,} games/s vectorized vs {g['reference_games_per_s']:,} scalar engine ({g['ratio']}x)"
    )
    for r in records[1:]:
        print(
            f"auroc {r['latents']} latents x {r['pairs']} pairs x {r['positions']:,} positions, density {r['density']}: "
            f"{r['seconds']} s vs scipy-rank reference {r['reference_seconds']} s ({r['ratio']}x; max |diff| {r['max_abs_diff']:.1e})"
        )


if __name__ == "__main__":
    main()
