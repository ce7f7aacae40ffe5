"""Simulate the gain that duplicate latents give the naive and the cross-fitted good-classifier counts (docs/guide/cross-fitted-counts.md).

Pair p's latent is its indicator plus noise at population AUROC 0.87-0.92; the duplicated code holds 4
independent noisy copies of each latent, the single code the first copy only, so both have the same
population AUROC per pair and any gain is selection bias. Run: PYTHONPATH=src python scripts/sim_crossfit_bias.py [SIMS]
(40 simulations: about 9 minutes on 2 loaded cores).
"""

import sys

import numpy as np
import torch

from saelab.sources.othello.auroc import auroc_matrix, good_classifier_report, pair_indicators
from saelab.sources.othello.crossfit import crossfit_good_counts


def make(seed: int, copies: int = 4, n_games: int = 100, per_game: int = 20):
    """(codes [P, copies·192], labels [P, 64], game ids [P]) with latent c·192 + p the c-th copy of pair p's latent."""
    rng = np.random.default_rng(seed)
    n = n_games * per_game
    labels = rng.integers(0, 3, size=(n, 64))
    y = pair_indicators(labels).numpy()
    s = np.linspace(0.5, 0.62, 192)[rng.permutation(192)]
    x = np.maximum(y[:, None, :] + s * rng.standard_normal((n, copies, 192)), 0).reshape(n, copies * 192)
    return torch.tensor(x, dtype=torch.float32), labels, np.repeat(np.arange(n_games), per_game)


def main(sims: int) -> None:
    """Print the mean counts and the duplicates' gain (mean ± s.e. over simulations) for both counts."""
    out = []
    for seed in range(sims):
        codes, labels, games = make(seed)
        row = []
        for c in (codes[:, :192], codes):
            row += [
                good_classifier_report(auroc_matrix(c, labels))["good_classifiers"],
                crossfit_good_counts(c, labels, games, n_boot=0)["good_classifiers"],
            ]
        out.append(row)
    a = np.array(out, float)
    gain_naive, gain_cf = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]

    def se(v):
        return v.std(ddof=1) / np.sqrt(len(v))

    print(
        f"{sims} sims; one latent: naive {a[:, 0].mean():.2f}, cross-fitted {a[:, 1].mean():.2f}; "
        f"4 copies: naive {a[:, 2].mean():.2f}, cross-fitted {a[:, 3].mean():.2f}"
    )
    print(
        f"gain from duplicates: naive {gain_naive.mean():.2f} ± {se(gain_naive):.2f}, cross-fitted {gain_cf.mean():.2f} ± {se(gain_cf):.2f}"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
