"""Reconstruction loss functions shared by the objective and by methods with extra terms."""

from torch import Tensor


def squared_error(x_hat: Tensor, x: Tensor) -> Tensor:
    """Σ_d (x̂ − x)², averaged over rows: the per-token squared error every loss term uses."""
    return (x_hat - x).pow(2).sum(dim=-1).mean()


def normalized_squared_error(x_hat: Tensor, x: Tensor) -> Tensor:
    """Squared error divided by that of predicting the batch mean of x (the scaling paper's NMSE)."""
    baseline = (x - x.mean(dim=0, keepdim=True)).pow(2).sum(dim=-1).mean()
    return squared_error(x_hat, x) / baseline.clamp_min(1e-30)
