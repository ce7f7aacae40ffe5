"""Smoothed-L0 penalty (OthelloGPT report): a sigmoid step with f(0) = ε and f(δ) = 1 − ε."""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.methods.base import Params, Penalty, SparsityKnob, param, require
from saelab.methods.registry import register_penalty


@register_penalty("smoothed_l0")
class SmoothedL0(Penalty):
    """(1/n)·Σ_i f(z_i), f(x) = sigmoid(m·(x − δ/2)), m = (2/δ)·ln(1/ε − 1); batch mean."""

    description = "(1/n)Σ sigmoid(m(z − δ/2)) with f(0)=ε, f(δ)=1−ε"
    # Bounded by 1 and divided by n, this penalty is ~n times weaker per unit α than L1, and its step
    # saturates past δ (large activations feel no pull), so the α that holds an L0 keeps rising with
    # training: at 512 latents × 3,000 steps it passed L1's bound of 1e4 before L0 reached 32.
    # A target L0 counts the latents past δ/2, where the step crosses one half: driving entries to exact
    # zero takes ~1/(4ε) the α that clears the transition zone (f'(0)/f'(δ/2) = 4ε(1 − ε)), and at that α
    # the code collapsed (OthelloGPT, 512 latents, target L0 32 counted as non-zeros: NMSE 0.95).
    sparsity_knob = SparsityKnob(param="alpha", initial=1e-2, high=1e8, weights="penalty", measure="l0_level")

    @dataclass
    class Params(Params):
        eps: float = param(0.01, "value of the step at 0 (and 1 − ε at δ)")
        delta: float = param(1.0, "width of the transition from ε to 1 − ε")

        def validate(self, field):
            require(0.0 < float(self.eps) < 0.5, f"{field}.eps", self.eps, "must be in (0, 0.5)")
            require(float(self.delta) > 0, f"{field}.delta", self.delta, "must be > 0")

    def active_level(self) -> float:
        """δ/2: where the step is one half, the level a target L0 counts a latent as on above."""
        return self.params.delta / 2

    def slope(self) -> float:
        """m such that f(0) = ε and f(δ) = 1 − ε."""
        return 2.0 / self.params.delta * math.log(1.0 / self.params.eps - 1.0)

    def forward(self, z: Tensor) -> Tensor:
        """Batch mean of the per-sample smoothed L0 / n."""
        step = torch.sigmoid(self.slope() * (z - self.params.delta / 2))
        return step.mean(dim=-1).mean()

    entrywise = True

    def on_entries(self, values: Tensor, rows: Tensor, n_rows: int) -> Tensor:
        """The entries' steps plus f(0) = ε for each of the code's zeros, over n_rows·n."""
        step = torch.sigmoid(self.slope() * (values - self.params.delta / 2))
        at_zero = torch.sigmoid(values.new_tensor(-self.slope() * self.params.delta / 2))
        cells = n_rows * self.n_latents
        return (step.sum() + (cells - values.numel()) * at_zero) / cells
