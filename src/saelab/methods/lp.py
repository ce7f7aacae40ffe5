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
        return _LpRowSums.apply(z, float(self.params.p), float(self.params.c)).mean()

    entrywise = True

    def on_entries(self, values: Tensor, rows: Tensor, n_rows: int) -> Tensor:
        """Σ(c·|v|)^p over the positive entries, over the rows (no zeros here, so pow's gradient is finite)."""
        return (values.abs() * float(self.params.c)).pow(float(self.params.p)).sum() / n_rows


class _LpRowSums(torch.autograd.Function):
    """Σ_i (c·|z_i|)^p per row, with the gradient p·c^p·|z|^(p−1)·sign(z) and 0 where z = 0.

    pow'(0) is infinite for p < 1, so plain autograd needs the zeros routed around the power (two
    torch.where over the whole [B, n] code, about a quarter of a dense L1(sqrt) step at (128, 1024,
    batch 2048)); here the forward needs nothing (0^p = 0 for p > 0) and the backward zeroes those
    entries in place.
    """

    @staticmethod
    def forward(ctx, z: Tensor, p: float, c: float) -> Tensor:
        ctx.save_for_backward(z)
        ctx.p, ctx.c = p, c
        return (z.abs() * c).pow_(p).sum(dim=-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_rows: Tensor):
        (z,) = ctx.saved_tensors
        p, c = ctx.p, ctx.c
        d = z.abs().pow_(p - 1.0).mul_(z.sign())  # inf·0 = nan at zeros for p < 1: zeroed next
        d.masked_fill_(z == 0, 0.0)
        return d.mul_(grad_rows.unsqueeze(-1) * (p * c**p)), None, None
