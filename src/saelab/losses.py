"""Reconstruction loss functions shared by the objective and by methods with extra terms."""

from torch import Tensor

from saelab.util import distributed


def squared_error(x_hat: Tensor, x: Tensor) -> Tensor:
    """Σ_d (x̂ − x)², averaged over rows: the per-token squared error every loss term uses."""
    return (x_hat - x).pow(2).sum(dim=-1).mean()


def batch_variance(x: Tensor) -> Tensor:
    """Squared error of predicting the batch mean of x: mean over rows of ‖x − mean(x)‖² (no gradient)."""
    x = x.detach()
    # Data-parallel: the global batch's mean and variance (two passes, as in one process), not this slice's.
    mean = distributed.batch_mean(x.mean(dim=0, keepdim=True))
    return distributed.batch_mean((x - mean).pow(2).sum(dim=-1).mean())


def normalized_squared_error(x_hat: Tensor, x: Tensor) -> Tensor:
    """Squared error divided by that of predicting the batch mean of x (the scaling paper's NMSE)."""
    return squared_error(x_hat, x) / batch_variance(x).clamp_min(1e-30)


def auxk_term(aux_hat: Tensor, residual: Tensor, x: Tensor) -> Tensor:
    """AuxK on the scale of our raw squared-error loss: NMSE(aux, residual) × var(x).

    The scaling paper's objective is NMSE(x̂, x) + c·NMSE(aux, residual), both divided by a variance.
    Our reconstruction term is the raw squared error, i.e. var(x)·NMSE(x̂, x); multiplying the AuxK
    term by the same var(x) keeps the paper's ratio between the two terms under any normalization
    (without it, AuxK was var(x) ≈ 100× too weak under `--normalize scalar` on OthelloGPT).
    """
    return normalized_squared_error(aux_hat, residual) * batch_variance(x)
