"""Score an SAE by the board-state features it recovers (the OthelloGPT report's good-classifier metric)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from saelab.evals.evaluate import evaluate
from saelab.evals.reconstruction import ReconstructionResult
from saelab.formats.folder import load_sae, read_saelab_record
from saelab.sources.othello.auroc import auroc_matrix, coverage, good_classifier_report
from saelab.sources.othello.bootstrap import N_BOOT, findable_on_positions
from saelab.sources.othello.codes import DENSE_FRACTION, DenseCodes, SparseCodes
from saelab.sources.othello.crossfit import crossfit_coverage, crossfit_good_counts
from saelab.sources.othello.games import generate_games
from saelab.sources.othello.harvest import Harvest, load_model
from saelab.sources.othello.held_out import EVAL_SEED_OFFSET, held_out_data
from saelab.sources.othello.model import ASSETS_DIR
from saelab.sources.othello.probes import PROBES_FILE, load_probe_report, train_probes

COUNT_METHOD = "crossfit-2fold-games"  # how good_classifiers, good_findable and coverage are counted (othello.crossfit)


@dataclass
class OthelloScore:
    """Board-state recovery of one SAE on held-out games (metrics in the SAE's normalized space)."""

    good_classifiers: float  # cross-fitted: pairs whose latent chosen on one half of the games has AUROC ≥ 0.9 on the other (mean of both ways)
    good_classifier_latents: int  # latents that are a good classifier of some pair (same games)
    findable: int  # pairs a linear probe at this layer classifies with AUROC ≥ 0.9
    good_classifiers_frac: float  # good_findable / findable
    good_classifier_latents_frac: float
    coverage: float  # Karvonen et al., cross-fitted: mean over pairs of the F1 on one half of the (latent, threshold) best on the other
    l0: float
    nmse: float
    dead_fraction: float
    positions: int
    games: int
    good_findable: float = (
        0.0  # cross-fitted good pairs that are also findable (the numerator of good_classifiers_frac)
    )
    l0_eps: float = 0.0
    count_method: str = (
        COUNT_METHOD  # how the three counts above were made; the *_naive ones choose and score on the same games
    )
    good_classifiers_naive: int = 0  # pairs with some latent at AUROC ≥ 0.9, chosen and scored on all games (biased up)
    good_findable_naive: int = 0
    coverage_naive: float = float("nan")
    good_classifiers_eval_se: float | None = (
        None  # game-bootstrap standard error of the cross-fitted count (the evaluation's noise)
    )
    good_findable_eval_se: float | None = None
    coverage_eval_se: float | None = None
    ci: dict = field(default_factory=dict)  # metric → 95% interval (rows: blocks of positions; counts: games)
    good_pairs: list = field(default_factory=list)  # [square, state] pairs found (naive: any latent on all games)
    findable_pairs: list = field(default_factory=list)
    best_auroc: list = field(default_factory=list)  # per pair 3·square + state: the best latent's AUROC (all games)

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return asdict(self)


def findable_mask(layer: int, games: int = 3000) -> np.ndarray:
    """Bool [64, 3]: pairs a linear probe at this layer finds (AUROC ≥ 0.9), from the committed probe table.

    A model without a committed table (or a layer missing from it) gets probes fitted on fresh games.
    """

    if (ASSETS_DIR / PROBES_FILE).exists():
        report = load_probe_report()
        if layer in report.findable:
            return report.findable[layer]

    return train_probes(load_model(), generate_games(games, seed=EVAL_SEED_OFFSET + 1), [layer]).findable[layer]


def latent_activations(
    sae, acts: np.ndarray, batch: int = 8192
) -> tuple[SparseCodes | DenseCodes, ReconstructionResult]:
    """Codes [P, n] of raw activations and the reconstruction metrics of the same pass (evals.evaluate).

    The codes keep their non-zero entries (SparseCodes) unless more than half of them are non-zero
    (leaky TopK), where the dense array is smaller (DenseCodes).
    """
    P, n = len(acts), sae.cfg.n_latents
    rows, cols, vals = [], [], []
    dense: list[torch.Tensor] = []  # filled once the codes prove mostly non-zero

    def keep(z, first):
        z = z.detach().cpu().float()
        if not dense and int(torch.count_nonzero(z)) > DENSE_FRACTION * z.numel():
            dense.append(SparseCodes.from_entries(_cat(rows), _cat(cols), _cat(vals), (P, n)).to_dense())
        if dense:
            dense[0][first : first + z.shape[0]] = z
            return
        r, c = z.nonzero(as_tuple=True)
        rows.append((r + first).int())
        cols.append(c.int())
        vals.append(z[r, c])

    result = evaluate(sae, acts, rows="all", batch_size=batch, scan=False, on_codes=keep)
    if dense:
        return DenseCodes(dense[0]), result
    return SparseCodes.from_entries(_cat(rows), _cat(cols), _cat(vals), (P, n)), result


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat that accepts an empty list."""
    return torch.cat(parts) if parts else torch.zeros(0)


def score_sae(
    sae,
    source: dict,
    games: int = 2000,
    seed: int | None = None,
    data: Harvest | None = None,
    findable: np.ndarray | None = None,
    n_boot: int = N_BOOT,
) -> OthelloScore:
    """Harvest held-out games from the SAE's own source (or use `data`) and count what it recovers.

    `findable` defaults to probes cross-fitted on these same positions; without `data`, both come
    from the held-out cache (othello.held_out), computed once per source, games and seed. The counts and coverage are
    cross-fitted over two halves of the games (othello.crossfit; the same-games values are kept as
    *_naive); `n_boot` game-bootstrap replicates give their intervals and *_eval_se (0: none).
    """

    if data is None:
        data, cached = held_out_data(source, games, seed)
        findable = cached if findable is None else findable
    codes, recon = latent_activations(sae, data.activations)
    games = data.positions[:, 0]
    mask = findable if findable is not None else findable_on_positions(data.activations, data.labels, games)
    auc = auroc_matrix(codes, data.labels)
    report = good_classifier_report(auc, mask)
    counts = crossfit_good_counts(codes, data.labels, games, mask, n_boot=n_boot)
    cov = crossfit_coverage(codes, data.labels, games, n_boot=n_boot)
    n_findable = report["findable"]
    ci = {k: v for k, v in recon.ci.items() if k in ("l0", "l0_eps", "nmse")}
    if n_boot:
        ci.update(counts["ci"], **cov["ci"])
    return OthelloScore(
        good_classifiers=counts["good_classifiers"],
        good_classifier_latents=report["good_classifier_latents"],
        findable=n_findable,
        good_classifiers_frac=counts["good_findable"] / n_findable if n_findable else float("nan"),
        good_classifier_latents_frac=report["good_classifier_latents_frac"],
        coverage=cov["coverage"],
        l0=recon.l0,
        nmse=recon.nmse,
        dead_fraction=recon.dead_fraction,
        good_findable=counts["good_findable"],
        l0_eps=recon.l0_eps,
        good_classifiers_naive=report["good_classifiers"],
        good_findable_naive=report["good_findable"],
        coverage_naive=float(coverage(codes, data.labels)["coverage"]),
        good_classifiers_eval_se=counts["good_classifiers_eval_se"],
        good_findable_eval_se=counts["good_findable_eval_se"],
        coverage_eval_se=cov["coverage_eval_se"],
        ci=ci,
        positions=int(len(data.activations)),
        games=int(data.source["games"]),
        good_pairs=report["good_pairs"],
        findable_pairs=[[int(s), int(t)] for s, t in zip(*np.nonzero(np.asarray(mask).reshape(64, 3)))],
        best_auroc=report["best_auroc"],
    )


def score_folder(folder: str | Path, games: int = 2000, seed: int | None = None) -> OthelloScore:
    """Score a saved SAE folder; the source (model, layer, trimming) comes from its saelab.json."""
    record = read_saelab_record(folder)
    return score_sae(load_sae(folder), record.get("source"), games=games, seed=seed)
