"""Lp penalty Σ_i (c·|z_i|)^p: p = 0.5 is L1(sqrt); c covers sqrt(c·x)."""

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.methods.base import Params, Penalty, param, require
from saelab.methods.registry import register_penalty


@register_penalty("lp")
class Lp(Penalty):
    """Mean over samples of Σ_i (c·|z_i|)^p; zeros contribute nothing and get a zero gradient."""

    description = "Σ(c·|z|)^p per sample (p=0.5: L1 of sqrt; c: sqrt(c·x))"

    @dataclass
    class Params(Params):
        p: float = param(0.5, "exponent (0 < p)")
        c: float = param(1.0, "scale inside the power")

        def validate(self, field):
            require(float(self.p) > 0, f"{field}.p", self.p, "must be > 0")
            require(float(self.c) > 0, f"{field}.c", self.c, "must be > 0")

    def forward(self, z: Tensor) -> Tensor:
        """Batch-mean Lp penalty."""
        mag = z.abs()
        nonzero = mag > 0
        # pow'(0) is infinite for p < 1; route zeros through a dummy value so their gradient is 0, not NaN.
        safe = torch.where(nonzero, mag, torch.ones_like(mag))
        term = torch.where(nonzero, (self.params.c * safe) ** self.params.p, torch.zeros_like(mag))
        return term.sum(dim=-1).mean()
