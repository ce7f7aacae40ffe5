"""Board-state score cost: the cross-fitted counts with their game bootstrap against the same-games counts with theirs.

Side by side in one process on synthetic TopK-like codes (k active of n latents, a third of them tracking a
pair's indicator). The reference is the same-games bootstrap that score_sae ran before the cross-fit
(bootstrap.good_count_intervals, 4 candidates per pair, 256 bins), loaded from a file given on the command
line (e.g. `git show 02715cb:src/saelab/sources/othello/bootstrap.py > /tmp/old_bootstrap.py`).
Run: PYTHONPATH=src python bench/score_crossfit.py /tmp/old_bootstrap.py [games]
"""

import importlib.util
import sys
import time

import numpy as np
import torch

from saelab.sources.othello.auroc import (
    auroc_matrix,
    coverage,
    good_classifier_report,
    pair_indicators,
)
from saelab.sources.othello.crossfit import crossfit_coverage, crossfit_good_counts


def codes(n_games: int, per_game: int = 55, n: int = 512, k: int = 32, seed: int = 0):
    """(codes [P, n] with k positive entries per row, labels [P, 64], game ids [P])."""
    rng = np.random.default_rng(seed)
    P = n_games * per_game
    labels = rng.integers(0, 3, size=(P, 64))
    y = pair_indicators(labels).numpy()
    pre = rng.standard_normal((P, n)).astype(np.float32)
    pre[:, : n // 3] += 2.5 * y[:, rng.integers(0, 192, n // 3)]
    top = np.argpartition(-pre, k, axis=1)[:, :k]
    z = np.zeros_like(pre)
    np.put_along_axis(z, top, np.maximum(np.take_along_axis(pre, top, 1), 0), 1)
    return torch.from_numpy(z), labels, np.repeat(np.arange(n_games), per_game)


def main(old_path: str, n_games: int) -> None:
    """Print seconds for each path and their ratio."""
    spec = importlib.util.spec_from_file_location("old_bootstrap", old_path)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    z, labels, games = codes(n_games)
    findable = np.ones(192, bool)
    t0 = time.perf_counter()
    auc = auroc_matrix(z, labels)
    good_classifier_report(auc, findable)
    coverage(z, labels)
    t1 = time.perf_counter()
    old.good_count_intervals(z, labels, games, auc, findable, n_boot=200)
    t2 = time.perf_counter()
    crossfit_good_counts(z, labels, games, findable, n_boot=200)
    t3 = time.perf_counter()
    crossfit_coverage(z, labels, games, n_boot=200)
    t4 = time.perf_counter()
    before, after = (t1 - t0) + (t2 - t1), (t1 - t0) + (t4 - t2)
    print(f"{len(z)} positions, {z.shape[1]} latents, {n_games} games, 200 replicates")
    print(f"same-games AUROC + coverage: {t1 - t0:.1f} s; same-games bootstrap: {t2 - t1:.1f} s")
    print(f"cross-fitted counts + bootstrap: {t3 - t2:.1f} s; cross-fitted coverage + bootstrap: {t4 - t3:.1f} s")
    print(f"board-state score before {before:.1f} s, now {after:.1f} s: ratio {after / before:.2f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
