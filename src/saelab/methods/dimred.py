"""Dimension-reduction activation (OthelloGPT report): a leaky TopK whose k adapts to the input."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.methods.base import Activation, Params, SparsityKnob, param, require
from saelab.methods.registry import register_activation


def a_sequence(n: int, p: float, p_threshold: int | None) -> torch.Tensor:
    """The report's a_0..a_n (a_0 = 0, a_1 = 1), float64.

    a_k = (1 − p_k)·a_{k−1} + p_k·k/(k−1)·a_{k−1}. For k ≤ p_threshold (or always, when it is None)
    p_k = p; past the threshold p_k rises as fast as a_k − a_{k−1} ≤ a_{k−1} − a_{k−2} allows, i.e.
    p_k = (k−1)(a_{k−1} − a_{k−2}) / a_{k−1}, which makes the increments constant from there on.
    Both of the report's constraints (a_k < k/(k−1)·a_{k−1} and concavity) then hold for every k.
    """
    a = torch.zeros(n + 1, dtype=torch.float64)
    if n >= 1:
        a[1] = 1.0
    for k in range(2, n + 1):
        prev, prev2 = a[k - 1].item(), a[k - 2].item()
        if p_threshold is None or k <= p_threshold:
            p_k = p
        else:
            p_k = min(1.0, (k - 1) * (prev - prev2) / prev)
        a[k] = prev * (1.0 + p_k / (k - 1))
    return a


def dimred_support(x: Tensor, a: Tensor, max_iter: int | None = None) -> Tensor:
    """The support S_x of each row of non-negative `x`, by the appendix's iteration (vectorized over rows).

    S_0 = [n]; S_j = {i ∈ S_{j−1} : x_i ≥ b_j} with b_j = (1 − a_{k−1}/a_k)·Σ_{i∈S_{j−1}} x_i and
    k = |S_{j−1}|, until nothing changes. Each pass touches the whole batch at once; the number of
    passes is the largest number of removal rounds any row needs (at most n).
    """
    n = x.shape[-1]
    ratio = (1.0 - a[:-1] / a[1:].clamp_min(1e-300)).to(torch.float64)  # ratio[k-1] = 1 − a_{k−1}/a_k
    xd = x.detach().to(torch.float64)
    mask = torch.ones_like(xd, dtype=torch.bool)
    # `masked` holds x on S and 0 elsewhere (where(S, x, 0), so the sums are the same, in the same
    # order) and k = |S| is kept by subtraction: each pass reads x once instead of casting the mask.
    masked = xd.clone()
    k = torch.full(xd.shape[:-1], n, dtype=torch.long, device=xd.device)
    for _ in range(max_iter if max_iter is not None else n + 1):
        bound = ratio[(k - 1).clamp_min(0)] * masked.sum(dim=-1)
        new_mask = torch.ge(xd, bound.unsqueeze(-1)).logical_and_(mask)
        if torch.equal(new_mask, mask):
            break
        dropped = new_mask.logical_xor(mask)
        masked.masked_fill_(dropped, 0.0)
        k -= dropped.sum(dim=-1)
        mask = new_mask
    return mask


def dimred_support_exact(x: Tensor, a: Tensor) -> Tensor:
    """S_x by the geometric definition itself: the union of the non-empty S minimizing a_|S| / Σ_S x_i.

    For a fixed size k the best S is the top k, so it suffices to sort each row once, take prefix
    sums c_k and minimize a_k / c_k over k; ties in k or in values are unioned (largest k,
    every entry ≥ the k-th value). Fully vectorized: one sort per batch.
    """
    xd = x.detach().to(torch.float64)
    n = xd.shape[-1]
    values = xd.sort(dim=-1, descending=True).values
    prefix = values.cumsum(dim=-1)
    ratio = torch.where(prefix > 0, a[1 : n + 1] / prefix.clamp_min(1e-300), torch.full_like(prefix, float("inf")))
    best = ratio.min(dim=-1, keepdim=True).values
    ties = ratio <= best * (1 + 1e-12)
    k_star = n - 1 - ties.flip(-1).to(torch.int64).argmax(dim=-1, keepdim=True)  # last minimizing index
    cutoff = values.gather(-1, k_star)
    all_zero = ~torch.isfinite(best)
    return (xd >= cutoff) | all_zero


SUPPORT_ALGORITHMS = {"iterative": dimred_support, "exact": dimred_support_exact}


@register_activation("dimred")
class DimensionReduction(Activation):
    """D_ε(x)_i = x_i on the support S_x, (ε/b)·x_i elsewhere, b = min over S_x; x = ReLU(pre).

    S_x is defined geometrically (the face of the region cut by the hyperplanes Σ_{i∈S} z_i = a_|S|
    through which the ray along x leaves it). `support="iterative"` (default) runs the report's fast
    S_j / b_j iteration, as the report trained with; `support="exact"` solves the definition itself.
    The report states the two agree under its constraints on a_k; they agree whenever a_k / c_k
    (c_k: sum of the k largest entries) has a single local minimum in k, but the iteration can stop
    at a larger local minimum otherwise (tests/methods/test_methods.py shows such an input).
    """

    description = "leaky code on an input-dependent support S_x (report appendix; a_k from p or a p_k schedule)"
    # A larger p makes a_k grow faster, so the support S_x shrinks; entries outside it stay below ε.
    sparsity_knob = SparsityKnob(param="p", low=1e-4, high=0.999, initial=0.15, measure="l0_eps")

    @dataclass
    class Params(Params):
        eps: float = param(0.01, "entries outside S_x are scaled by ε/b (b = min over S_x)")
        p: float = param(0.15, "proportion p in a_k = (1−p)a_{k−1} + p·k/(k−1)·a_{k−1}")
        p_threshold: int | None = param(10, "past this k, p_k rises as fast as concavity allows (None: constant p)")
        support: str = param(
            "iterative", "'iterative' (the report's S_j/b_j algorithm) or 'exact' (the geometric definition)"
        )

        def validate(self, field):
            require(float(self.eps) >= 0.0, f"{field}.eps", self.eps, "must be ≥ 0")
            require(0.0 < float(self.p) < 1.0, f"{field}.p", self.p, "must be in (0, 1)")
            t = self.p_threshold
            require(
                t is None or (isinstance(t, int) and t >= 2),
                f"{field}.p_threshold",
                t,
                "must be an integer ≥ 2 or None",
            )
            require(
                self.support in SUPPORT_ALGORITHMS,
                f"{field}.support",
                self.support,
                f"must be one of {sorted(SUPPORT_ALGORITHMS)}",
            )

    def __init__(self, params, n_latents):
        super().__init__(params, n_latents)
        self.register_buffer("a", a_sequence(n_latents, float(params.p), params.p_threshold), persistent=False)

    def set_param(self, name: str, value) -> None:
        """Change a parameter; a_k depends on p and p_threshold, so it is rebuilt."""
        super().set_param(name, value)
        self.a = a_sequence(self.n_latents, float(self.params.p), self.params.p_threshold).to(self.a.device)

    def forward(self, pre: Tensor) -> Tensor:
        """Leaky code on the adaptive support."""
        x = torch.relu(pre)
        support = SUPPORT_ALGORITHMS[self.params.support](x, self.a)
        b = torch.where(support, x, torch.full_like(x, float("inf"))).min(dim=-1, keepdim=True).values
        factor = torch.where(b > 0, self.params.eps / b.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(b))
        return torch.where(support, x, factor * x)
