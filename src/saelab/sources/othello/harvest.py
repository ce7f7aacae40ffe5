"""Residual-stream activations of OthelloGPT with the board state of every position, row-aligned."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from saelab.errors import ConfigError
from saelab.sources.base import with_site
from saelab.sources.othello.games import board_states, generate_games
from saelab.sources.othello.model import (
    CONTEXT,
    OthelloGPT,
    games_to_tokens,
    load_default_model,
)
from saelab.sources.othello.site import othello_site
from saelab.util.atomic import atomic_write_bytes, atomic_write_json

DEFAULT_LAYER = 3


@dataclass
class HarvestConfig:
    """Which games, which layer, which positions."""

    layer: int = DEFAULT_LAYER
    games: int = 20_000
    seed: int = 0
    trim_start: int = 5  # drop the first positions: the board is nearly the same in every game
    trim_end: int = 5  # and the last ones: few games reach them
    batch_games: int = 512
    model: str = "default"  # "default" = the committed model, else a folder

    def validate(self, n_layer: int) -> "HarvestConfig":
        """Check ranges against the model; raise ConfigError naming the field."""
        if not 0 <= self.layer <= n_layer:
            raise ConfigError("layer", self.layer, f"must lie in 0..{n_layer} (0 = embeddings, i = after block i)")
        if self.games < 1:
            raise ConfigError("games", self.games, "must be ≥ 1")
        if self.trim_start < 0 or self.trim_end < 0 or self.trim_start + self.trim_end >= 59:
            raise ConfigError(
                "trim_start",
                (self.trim_start, self.trim_end),
                "trims must be ≥ 0 and leave at least one of the 59 positions",
            )
        if self.batch_games < 1:
            raise ConfigError("batch_games", self.batch_games, "must be ≥ 1")
        return self


@dataclass
class Harvest:
    """Activations [P, d_model] float32, labels [P, 64] uint8 (0 empty/1 mine/2 theirs), positions [P, 2] (game, move)."""

    activations: np.ndarray
    labels: np.ndarray
    positions: np.ndarray
    source: dict


def load_model(name: str = "default"):
    """The committed OthelloGPT, or one saved in a folder."""

    if name == "default":
        return load_default_model()
    if not Path(name).is_dir():
        raise ConfigError("model", name, "not a folder holding an OthelloGPT (or 'default')")
    return OthelloGPT.load(name)


def model_fingerprint(model) -> str:
    """Short hash of the weights, so an SAE's source names exactly which model it read."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def residuals_by_layer(
    model, games: np.ndarray, layers: list[int], lo: int, hi: int, batch_games: int = 512
) -> tuple[dict[int, torch.Tensor], np.ndarray, np.ndarray]:
    """Residuals {layer: [P, d_model]}, labels [P, 64] and (game, move) [P, 2] of the real positions lo..hi-1.

    Position t is the residual stream at token t (after move t was played), labelled with the
    board after move t seen by the player about to move (replayed through passes). Positions
    after a game ended hold padding and are skipped. One forward pass serves every layer and
    stops at the deepest one asked for.
    """

    labels_all, _ = board_states(games)
    deepest = max(layers)
    model.eval()
    acts: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    labels, positions = [], []
    for g0 in range(0, len(games), batch_games):
        chunk = games[g0 : g0 + batch_games]
        resid = model.all_residuals(games_to_tokens(chunk[:, :CONTEXT]), up_to=deepest)
        alive = chunk[:, lo:hi] >= 0
        mask = torch.from_numpy(alive)
        for l in layers:
            acts[l].append(resid[l][:, lo:hi][mask])
        labels.append(labels_all[g0 : g0 + len(chunk), lo:hi][alive])
        g_idx, t_idx = np.nonzero(alive)
        positions.append(np.stack([g_idx + g0, t_idx + lo], axis=1))
    return (
        {l: torch.cat(v) for l, v in acts.items()},
        np.concatenate(labels).astype(np.uint8),
        np.concatenate(positions).astype(np.int32),
    )


def harvest(cfg: HarvestConfig, model=None, games: np.ndarray | None = None) -> Harvest:
    """Play (or take) games, run the model to `layer`, keep the trimmed positions of games still running."""

    model = model if model is not None else load_model(cfg.model)
    cfg.validate(model.cfg.n_layer)
    if games is None:
        games = generate_games(cfg.games, cfg.seed)
    acts, labels, positions = residuals_by_layer(
        model, games, [cfg.layer], cfg.trim_start, CONTEXT - cfg.trim_end, cfg.batch_games
    )
    source = {
        "source": "othello",
        "model": cfg.model,
        "model_sha": model_fingerprint(model),
        "layer": cfg.layer,
        "trim_start": cfg.trim_start,
        "trim_end": cfg.trim_end,
        "games": int(len(games)),
        "seed": cfg.seed,
        "d_model": model.cfg.d_model,
    }
    return Harvest(acts[cfg.layer].numpy().astype(np.float32), labels, positions, source)


def write_harvest(h: Harvest, out: str | Path) -> Path:
    """activations.npy, labels.npy, positions.npy and source.json in `out`, each written atomically."""

    out = Path(out)
    for name, arr in (("activations", h.activations), ("labels", h.labels), ("positions", h.positions)):
        buf = io.BytesIO()
        np.save(buf, arr)
        atomic_write_bytes(out / f"{name}.npy", buf.getvalue())
    atomic_write_json(
        out / "source.json",
        {
            **with_site(h.source, othello_site(h.source)),  # the hook, for readers that do not know this source
            "rows": int(len(h.activations)),
            "files": {"activations": "activations.npy", "labels": "labels.npy", "positions": "positions.npy"},
        },
    )
    return out


def config_from_source(source: dict, games: int, seed: int) -> HarvestConfig:
    """A HarvestConfig reading the same model, layer and trimming as a recorded source."""
    return HarvestConfig(
        layer=int(source["layer"]),
        games=games,
        seed=seed,
        trim_start=int(source["trim_start"]),
        trim_end=int(source["trim_end"]),
        model=source.get("model", "default"),
    )
