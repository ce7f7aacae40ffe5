"""The OthelloGPT testbed as a data source: its hook names, the board-state score in sweeps, board labels for features."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from saelab.data.store import ActivationStore
from saelab.data.token_grid import UNKNOWN, TokenGrid
from saelab.errors import DataError
from saelab.model.site import ModelSite
from saelab.sources.base import FeatureRows
from saelab.sources.othello.site import NAME, is_othello_record, othello_site
from saelab.util.atomic import atomic_write_json

OTHELLO_SCORE = "othello_score.json"  # the full board-state score a sweep writes beside each SAE
# The score's headline columns in a sweep row, each checked against OTHELLO_SCORE when a sweep resumes.
CONFIRMED_KEYS = (
    "good_classifiers",
    "good_findable",
    "findable",
    "good_classifier_latents",
    "coverage",
    "good_classifiers_frac",
)
FILES = "abcdefgh"


def square_name(square: int) -> str:
    """Board square 0..63 (row-major from a1) as 'a1'..'h8'."""
    return f"{FILES[square % 8]}{square // 8 + 1}"


class OthelloSource:
    """Harvest folders of `saelab othello activations`: activations, board labels and (game, move) of every row."""

    name = NAME
    description = "the committed OthelloGPT (or a trained one) on random legal games, with board-state labels"
    score_files = {OTHELLO_SCORE: CONFIRMED_KEYS}

    def owns(self, record: dict) -> bool:
        """source.json of an OthelloGPT harvest."""
        return is_othello_record(record)

    def harvest(self, config, out: Path) -> Path:
        """`saelab othello activations`: config is a sources.othello.harvest.HarvestConfig."""
        from saelab.sources.othello.harvest import harvest, write_harvest

        return write_harvest(harvest(config), out)

    def site(self, record: dict) -> ModelSite | None:
        """The residual-stream hook of the harvested layer (sources.othello.site.othello_site)."""
        return othello_site(record)

    def sweep_evaluator(self, record: dict, options: dict[str, Any], say: Callable[[str], None]):
        """The board-state score, unless [eval] board = false (a sweep that claims only reconstruction skips its cost)."""
        return BoardScore(record, options, say) if options.get("board", True) else None

    def feature_rows(self, folder: Path, record: dict, model: str | None) -> FeatureRows:
        """Rows with the games regenerated from the harvest's (games, seed), and their board labels."""
        from saelab.sources.othello.games import generate_games

        try:
            positions = np.load(folder / "positions.npy").astype(np.int64)
            labels = np.load(folder / "labels.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DataError(f"{folder}: unreadable positions.npy or labels.npy ({e})") from None
        # The harvest generated its games from (games, seed); regenerating gives the same moves.
        games = generate_games(int(record["games"]), int(record["seed"])).astype(np.int64)
        tokens = np.where(games >= 0, games, UNKNOWN)
        rows = np.full(games.shape, -1, dtype=np.int64)
        rows[positions[:, 0], positions[:, 1]] = np.arange(len(positions))
        grid = TokenGrid(tokens, rows, positions[:, 0].copy(), positions[:, 1].copy(), 0)
        store = ActivationStore(folder)
        if store.n_rows != len(positions) or len(labels) != len(positions):
            raise DataError(
                f"{folder}: {store.n_rows} activation rows, {len(positions)} positions, {len(labels)} labels"
            )
        return FeatureRows(store, grid, record, labels=labels, model=record.get("model", "default"))

    def token_decoder(self, model: str | None) -> Callable[[int], str]:
        """A move token is the square it plays."""
        return square_name


class BoardScore:
    """Board-state score on held-out games, harvested once per sweep with the findable pairs fitted once."""

    def __init__(self, record: dict, options: dict[str, Any], say: Callable[[str], None]):
        self.source = record or {}
        self.options = options
        self.say = say
        self._data = None

    def __call__(self, sae, folder: Path) -> dict[str, Any]:
        """The score's row columns; the full score (per-pair AUROC, pairs found) goes to OTHELLO_SCORE beside the SAE."""
        from saelab.sources.othello.held_out import held_out_data
        from saelab.sources.othello.score import EVAL_SEED_OFFSET, score_sae

        if self._data is None:
            games = int(self.options.get("games", 2000))
            self.say(f"{games} held-out games for the board-state score (harvested, or from the cache)")
            # games_seed: another draw of held-out games (a search's choice is then scored on games it never saw).
            seed = int(self.source.get("seed", 0)) + EVAL_SEED_OFFSET + int(self.options.get("games_seed", 0))
            self._data = held_out_data(self.source, games, seed)  # cached across sweeps and processes
        data, findable = self._data
        s = score_sae(
            sae, self.source, data=data, findable=findable, n_boot=int(self.options.get("n_boot", 200))
        ).to_dict()
        atomic_write_json(folder / OTHELLO_SCORE, s)
        keys = (
            *CONFIRMED_KEYS,
            "count_method",
            "good_classifiers_naive",
            "good_findable_naive",
            "coverage_naive",
            "good_classifiers_eval_se",
            "good_findable_eval_se",
            "coverage_eval_se",
        )
        return {
            **{k: s[k] for k in keys},
            "ci": {k: v for k, v in s["ci"].items() if k.startswith("good") or k == "coverage"},
        }
