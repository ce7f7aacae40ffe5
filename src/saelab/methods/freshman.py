"""Freshman's-dream penalty (OthelloGPT report): (Σx)^p / Σx^p / n; Hoyer-square at p = 2."""

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.methods.base import Params, Penalty, SparsityKnob, param, require
from saelab.methods.registry import register_penalty


@register_penalty("freshman")
class FreshmansDream(Penalty):
    """(1/n)·(Σ_i z_i)^p / Σ_i z_i^p per sample (1/n for a 1-sparse code, k/n for k equal entries)."""

    description = "(Σz)^p / Σz^p / n; p=2 is the Hoyer-square"
    # Bounded by 1 and divided by n, this penalty is ~n times weaker per unit α than L1, and its pull fades
    # as activations grow (it only sees the code's shape), so the α that holds an L0 keeps rising with
    # training: at 512 latents × 3,000 steps it passed L1's bound of 1e4 before L0 reached 32.
    sparsity_knob = SparsityKnob(param="alpha", initial=1e-2, high=1e8, weights="penalty")

    @dataclass
    class Params(Params):
        p: float = param(2.0, "power (> 1)")

        def validate(self, field):
            require(float(self.p) > 1, f"{field}.p", self.p, "must be > 1")

    def forward(self, z: Tensor) -> Tensor:
        """Batch mean; an all-zero row contributes 0."""
        mag = z.abs()
        return self._mean_ratio(mag.sum(dim=-1), (mag**self.params.p).sum(dim=-1), z.shape[-1])

    entrywise = True

    def on_entries(self, values: Tensor, rows: Tensor, n_rows: int) -> Tensor:
        """forward from per-row sums over the entries (a row without entries contributes 0)."""
        mag = values.abs()
        return self._mean_ratio(
            mag.new_zeros(n_rows).index_add(0, rows, mag),
            mag.new_zeros(n_rows).index_add(0, rows, mag**self.params.p),
            self.n_latents,
        )

    def _mean_ratio(self, sums: Tensor, power_sums: Tensor, n: int) -> Tensor:
        """Batch mean of (Σ|z|)^p / Σ|z|^p / n from each row's two sums (0 where the row is all zero)."""
        alive = power_sums > 0
        num = sums**self.params.p
        ratio = torch.where(
            alive, num / torch.where(alive, power_sums, torch.ones_like(power_sums)), torch.zeros_like(power_sums)
        )
        return (ratio / n).mean()
