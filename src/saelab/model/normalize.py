"""Input normalization: none, unit (per token, the scaling paper) or scalar (one dataset factor)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from saelab.errors import ConfigError


class Normalizer(nn.Module):
    """Maps raw activations into the space the SAE trains in, and back.

    - `none`: identity.
    - `unit`: subtract each token's mean over d_in, scale it to unit norm; undoing it needs that
      token's mean and norm, so `denormalize` takes the context `normalize` returned.
    - `scalar`: multiply by one factor s chosen so that E‖s·x‖ = √d_in over the training data.
    """

    def __init__(self, mode: str = "none", factor: float | None = None):
        super().__init__()
        if mode not in ("none", "unit", "scalar"):
            raise ConfigError("normalize", mode, "must be one of none, unit, scalar")
        self.mode = mode
        self.register_buffer("factor", torch.tensor(1.0 if factor is None else float(factor)))

    @torch.no_grad()
    def fit(self, sample: Tensor) -> float | None:
        """Estimate the scalar factor from a sample of raw activations (no-op for other modes)."""
        if self.mode != "scalar":
            return None
        mean_norm = sample.double().norm(dim=-1).mean().item()
        if not math.isfinite(mean_norm) or mean_norm <= 0:
            raise ConfigError("normalize", "scalar", f"mean activation norm is {mean_norm}; cannot scale")
        self.factor.fill_(math.sqrt(sample.shape[-1]) / mean_norm)
        return float(self.factor)

    def normalize(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """(normalized x, context needed to undo it)."""
        if self.mode == "none":
            return x, None
        if self.mode == "scalar":
            return x * self.factor, None
        mu = x.mean(dim=-1, keepdim=True)
        centred = x - mu
        norm = centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return centred / norm, (mu, norm)

    def denormalize(self, x_n: Tensor, context: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Back to raw space; `unit` without a context stays in the normalized space."""
        if self.mode == "none":
            return x_n
        if self.mode == "scalar":
            return x_n / self.factor
        if context is None:
            return x_n
        mu, norm = context
        return x_n * norm + mu
