"""Without-top-k penalty (OthelloGPT report): distance of the code to its k-sparse projection."""

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.methods.base import Params, Penalty, param, require, topk_mask_values
from saelab.methods.registry import register_penalty


@register_penalty("without_topk")
class WithoutTopK(Penalty):
    """(1/n)·‖z − topk(z)‖_p per sample, p ∈ {1, 2}: zero for any k-sparse code."""

    description = "‖z − topk(z)‖_p / n, p ∈ {1,2}: only what lies outside the top k is penalized"

    @dataclass
    class Params(Params):
        k: int = param(32, "size of the free top-k set")
        p: int = param(1, "norm: 1 or 2")

        def validate(self, field):
            require(isinstance(self.k, int) and self.k >= 1, f"{field}.k", self.k, "must be an integer ≥ 1")
            require(self.p in (1, 2), f"{field}.p", self.p, "must be 1 or 2")

    def forward(self, z: Tensor) -> Tensor:
        """Batch mean of the norm of what remains outside each row's top k."""
        mag = z.abs()
        _, idx = topk_mask_values(mag, self.params.k)
        rest = mag.scatter(-1, idx, 0.0)
        if self.params.p == 1:
            norm = rest.sum(dim=-1)
        else:
            sq = (rest**2).sum(dim=-1)
            positive = sq > 0
            # sqrt'(0) is infinite; a row with nothing outside the top k gets gradient 0.
            norm = torch.where(positive, torch.where(positive, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))
        return (norm / z.shape[-1]).mean()
