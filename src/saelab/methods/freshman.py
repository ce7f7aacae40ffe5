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
        p = self.params.p
        num = mag.sum(dim=-1) ** p
        den = (mag**p).sum(dim=-1)
        alive = den > 0
        ratio = torch.where(alive, num / torch.where(alive, den, torch.ones_like(den)), torch.zeros_like(den))
        return (ratio / z.shape[-1]).mean()

    entrywise = True

    def on_entries(self, values: Tensor, rows: Tensor, n_rows: int) -> Tensor:
        """forward from per-row sums over the entries (a row without entries contributes 0)."""
        mag = values.abs()
        p = self.params.p
        num = mag.new_zeros(n_rows).index_add(0, rows, mag) ** p
        den = mag.new_zeros(n_rows).index_add(0, rows, mag**p)
        alive = den > 0
        ratio = torch.where(alive, num / torch.where(alive, den, torch.ones_like(den)), torch.zeros_like(den))
        return (ratio / self.n_latents).mean()
