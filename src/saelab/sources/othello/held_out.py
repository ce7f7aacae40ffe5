"""Held-out games for scoring an SAE and the pairs a probe finds on them, cached in the user's cache folder.

Both depend only on the OthelloGPT (its weights' fingerprint), the layer, the trimming, the number of
games and their seed, not on the SAE: scoring many SAEs of one source (one `othello score` per
folder of a sweep) harvests and fits the cross-fitted probes once. An entry is one .npz under
cache_dir()/othello-held-out (≈ 50 MB at 2,000 games of the committed model: the activations are what the SAE encodes),
written atomically and named by a hash of everything it depends on, which it also stores and is
checked on reading; an unreadable or mismatched entry is recomputed and replaced.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from saelab.errors import ConfigError
from saelab.sources.othello.bootstrap import findable_on_positions
from saelab.sources.othello.harvest import (
    Harvest,
    HarvestConfig,
    config_from_source,
    harvest,
    load_model,
    model_fingerprint,
)
from saelab.sources.othello.probes import ProbeConfig
from saelab.util.atomic import atomic_write
from saelab.util.cache_dir import cache_dir

EVAL_SEED_OFFSET = 1_000_003  # held-out games: a seed no training harvest uses by default
CACHE_VERSION = 1  # bump when the harvest or the findable probes change what they compute
FINDABLE_SEED = 0


def held_out_config(source: dict | None, games: int = 2000, seed: int | None = None) -> HarvestConfig:
    """The harvest of `games` held-out games from an SAE's recorded OthelloGPT source (model, layer, trimming)."""
    if source is None or source.get("source") != "othello":
        raise ConfigError(
            "sae", source, "was not trained on OthelloGPT activations (its saelab.json has no othello source)"
        )
    return config_from_source(
        source, games=games, seed=seed if seed is not None else int(source.get("seed", 0)) + EVAL_SEED_OFFSET
    )


def held_out_games(source: dict | None, games: int = 2000, seed: int | None = None) -> Harvest:
    """Harvest `games` held-out games from an SAE's recorded OthelloGPT source (not cached)."""
    return harvest(held_out_config(source, games, seed))


def _cache_key(cfg: HarvestConfig, model) -> dict:
    """Everything the harvest and the findable mask depend on."""
    return {
        "version": CACHE_VERSION,
        "model_sha": model_fingerprint(model),
        **{k: getattr(cfg, k) for k in ("layer", "games", "seed", "trim_start", "trim_end")},
        "probe": asdict(ProbeConfig(seed=FINDABLE_SEED)),
        "torch": torch.__version__,
    }


def cache_path(key: dict) -> Path:
    """The cache file of one key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / "othello-held-out" / f"{digest}.npz"


def _read(path: Path, key: dict) -> tuple[Harvest, np.ndarray] | None:
    """The cached (harvest, findable) if the entry exists, is whole and was made for `key`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["key"])) != json.loads(json.dumps(key)):
                return None
            data = Harvest(z["activations"], z["labels"], z["positions"], json.loads(str(z["source"])))
            return data, z["findable"].astype(bool)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def held_out_data(
    source: dict | None, games: int = 2000, seed: int | None = None, cache: bool = True
) -> tuple[Harvest, np.ndarray]:
    """(held-out harvest, findable [64, 3]: probes cross-fitted on these positions), from the cache when it holds them."""
    cfg = held_out_config(source, games, seed)
    model = load_model(cfg.model)
    key = _cache_key(cfg, model)
    path = cache_path(key)
    if cache and (hit := _read(path, key)) is not None:
        return hit
    data = harvest(cfg, model=model)
    findable = findable_on_positions(data.activations, data.labels, data.positions[:, 0], seed=FINDABLE_SEED)
    if cache:
        arrays = {
            "activations": data.activations,
            "labels": data.labels,
            "positions": data.positions,
            "findable": findable,
            "key": np.array(json.dumps(key)),
            "source": np.array(json.dumps(data.source)),
        }
        try:
            atomic_write(path, lambda f: np.savez(f, **arrays))
        except OSError:
            pass  # a read-only cache folder: recomputed next time, nothing else changes
    return data, findable
