"""Leaky TopK (OthelloGPT report): the k largest stay, the rest shrink to at most ε."""

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.kernels.plan import SparsePlan
from saelab.methods.base import Activation, param, require, topk_mask_values
from saelab.methods.registry import register_activation
from saelab.methods.topk import KParams

EPS_MODES = ("relative", "absolute")


@register_activation("leaky_topk")
class LeakyTopK(Activation):
    """T_{k,ε}(x)_i = x_i if x_i ≥ b, else (ε/b)·x_i, with x = ReLU(pre) and b its k-th largest entry.

    `eps_mode="absolute"` is the report's variant where non-top entries become ε·x_i. In the
    relative form every non-top entry is < ε, so the code is within ε of k-sparse. Gradients flow
    through b as well (it is a function of x), as in the report's definition.
    """

    description = "k largest ReLU activations kept, others scaled by ε/b (b = k-th largest) or by ε"

    @dataclass
    class Params(KParams):
        eps: float = param(0.01, "leak: bound on (relative) or factor of (absolute) the non-top entries")
        eps_mode: str = param("relative", "'relative' (ε/b)·x or 'absolute' ε·x for entries below b")

        def validate(self, field):
            super().validate(field)
            require(float(self.eps) >= 0.0, f"{field}.eps", self.eps, "must be ≥ 0")
            require(self.eps_mode in EPS_MODES, f"{field}.eps_mode", self.eps_mode, f"must be one of {EPS_MODES}")

    def forward(self, pre: Tensor) -> Tensor:
        """Top-k entries unchanged, the rest leaked."""
        x = torch.relu(pre)
        values, _ = topk_mask_values(x, self.params.k)
        b = values.min(dim=-1, keepdim=True).values
        top = x >= b
        if self.params.eps_mode == "relative":
            # b = 0 only when fewer than k entries are positive; those rows leak nothing.
            factor = torch.where(b > 0, self.params.eps / b.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(b))
        else:
            factor = torch.full_like(b, self.params.eps)
        return torch.where(top, x, factor * x)

    def sparse_plan(self) -> SparsePlan | None:
        """At ε = 0 this is TopK exactly (non-top entries × 0, and the gradient through b is 0·x_i).

        With ε > 0 every non-top entry is non-zero (ε·x_i/b), so no sparse form is exact.
        """
        return SparsePlan(k=self.params.k) if float(self.params.eps) == 0.0 else None
