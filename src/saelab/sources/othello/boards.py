"""8×8 board pictures of which (square, state) pairs an SAE recovered."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from saelab.report import save_figure

STATES = ("empty", "mine", "theirs")
FILES = "abcdefgh"


def plot_boards(rows: Sequence[dict], path: str | Path) -> Path:
    """One row of three boards (empty / mine / theirs) per SAE: colour = best latent AUROC, ✓ = found (≥ 0.9), grey = not findable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Constrained layout keeps row labels, titles and the colour bar from overlapping at any row count.
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.4 * len(rows) + 0.8), squeeze=False, layout="constrained")
    image = None
    for r, row in enumerate(rows):
        best = np.array([np.nan if b is None else b for b in row["best_auroc"]], dtype=float).reshape(64, 3)
        findable = np.zeros((64, 3), dtype=bool)
        for sq, st in row["findable_pairs"]:
            findable[sq, st] = True
        found = np.zeros((64, 3), dtype=bool)
        for sq, st in row["good_pairs"]:
            found[sq, st] = True
        for s in range(3):
            ax = axes[r, s]
            grid = best[:, s].reshape(8, 8)
            masked = np.ma.masked_where(~findable[:, s].reshape(8, 8), grid)
            ax.imshow(np.ones((8, 8)), cmap="Greys", vmin=0, vmax=4)  # grey backdrop for not-findable squares
            image = ax.imshow(masked, cmap="viridis", vmin=0.5, vmax=1.0)
            for sq in np.nonzero(found[:, s])[0]:
                ax.text(sq % 8, sq // 8, "✓", ha="center", va="center", color="white", fontsize=9, fontweight="bold")
            ax.set_xticks(range(8), list(FILES), fontsize=6)
            ax.set_yticks(range(8), [str(i + 1) for i in range(8)], fontsize=6)
            ax.set_title(STATES[s], fontsize=8)
        label = f"{row['name']}\n{row['good_classifiers']} / {row['findable']} found"
        axes[r, 0].set_ylabel(label, fontsize=8, fontweight="bold")
    if image is not None:
        fig.colorbar(
            image,
            ax=axes,
            orientation="horizontal",
            fraction=0.04,
            label="best latent AUROC (✓ ≥ 0.9; grey: no probe finds the pair)",
        )
    return save_figure(fig, path)
