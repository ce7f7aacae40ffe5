"""Sparse-superposition toy data with a known dictionary (the ground truth for MMCS)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saelab.errors import ConfigError, DataError
from saelab.util.atomic import atomic_write_bytes, atomic_write_json


@dataclass
class ToyConfig:
    """F unit features in d dims; each sample a sparse non-negative mix of them, plus noise."""

    n_features: int = 256
    d: int = 64
    n_samples: int = 50_000
    mean_active: float = 5.0
    noise: float = 0.0
    seed: int = 0
    decay: float = 0.0

    def validate(self) -> "ToyConfig":
        """Check ranges; raise ConfigError naming the field."""
        for name in ("n_features", "d", "n_samples"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(name, v, "must be an integer ≥ 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", self.seed, "must be an integer ≥ 0")
        for name in ("mean_active", "noise", "decay"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ConfigError(name, v, "must be a finite number")
        if not 0 < self.mean_active <= self.n_features:
            raise ConfigError("mean_active", self.mean_active, f"must be in (0, n_features={self.n_features}]")
        if self.noise < 0:
            raise ConfigError("noise", self.noise, "must be ≥ 0")
        if self.decay < 0:
            raise ConfigError("decay", self.decay, "must be ≥ 0")
        return self


def make_toy(cfg: ToyConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(activations [N, d] float32, dictionary [F, d] float32, true codes [N, F] float32).

    Feature i fires with probability p_i ∝ exp(−decay·i/F) scaled so the mean number of active
    features per sample is `mean_active`; an active feature has magnitude Uniform(0.5, 1.5) so
    that true codes are well away from zero. Gaussian noise of standard deviation `noise / √d`
    per coordinate is added.
    """
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    dictionary = rng.standard_normal((cfg.n_features, cfg.d))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    weights = np.exp(-cfg.decay * np.arange(cfg.n_features) / cfg.n_features)
    p = np.clip(weights / weights.sum() * cfg.mean_active, 0.0, 1.0)
    active = rng.random((cfg.n_samples, cfg.n_features)) < p
    magnitude = rng.uniform(0.5, 1.5, size=(cfg.n_samples, cfg.n_features))
    codes = (active * magnitude).astype(np.float32)
    x = codes @ dictionary.astype(np.float32)
    if cfg.noise > 0:
        x += rng.standard_normal(x.shape).astype(np.float32) * (cfg.noise / np.sqrt(cfg.d))
    return x.astype(np.float32), dictionary.astype(np.float32), codes


def write_toy(cfg: ToyConfig, out: str | Path) -> dict[str, Path]:
    """Write activations.npy, dictionary.npy and codes.npy (atomically) into `out`."""

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError("out", str(out), "exists and is not a folder")
    x, dictionary, codes = make_toy(cfg)
    paths = {}
    try:
        for name, arr in (("activations", x), ("dictionary", dictionary), ("codes", codes)):
            buf = io.BytesIO()
            np.save(buf, arr)
            paths[name] = out / f"{name}.npy"
            atomic_write_bytes(paths[name], buf.getvalue())
        atomic_write_json(out / "toy.json", {"config": cfg.__dict__, "files": {k: v.name for k, v in paths.items()}})
    except OSError as e:
        raise DataError(f"{e.filename or out}: cannot write ({e.strerror or e})") from None
    return paths
