"""Initialization from the scaling paper: unit decoder rows, W_enc = W_dec.T, b_dec from the data."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def geometric_median(points: Tensor, max_iter: int = 200, tol: float = 1e-7) -> Tensor:
    """Weiszfeld's algorithm: the point minimizing the sum of Euclidean distances to `points`."""
    pts = points.double()
    y = pts.mean(dim=0)
    for _ in range(max_iter):
        dist = (pts - y).norm(dim=-1)
        # A point that coincides with the estimate would get infinite weight; floor its distance.
        w = 1.0 / dist.clamp_min(1e-12)
        y_next = (w[:, None] * pts).sum(dim=0) / w.sum()
        shift = (y_next - y).norm()
        y = y_next
        if shift <= tol * (1.0 + y.norm()):
            break
    return y.to(points.dtype)


@torch.no_grad()
def unit_rows(n: int, d: int, generator: torch.Generator) -> Tensor:
    """n random directions in R^d, each of unit norm."""
    w = torch.randn(n, d, generator=generator)
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def initial_b_dec(kind: str, sample: Tensor | None, d_in: int) -> Tensor:
    """b_dec (the scaling paper's b_pre): geometric median, mean, or zero."""
    if kind == "zero" or sample is None:
        return torch.zeros(d_in)
    if kind == "mean":
        return sample.mean(dim=0)
    return geometric_median(sample)
