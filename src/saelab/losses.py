"""Reconstruction loss functions shared by the objective and by methods with extra terms."""

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.util import distributed


def squared_error(x_hat: Tensor, x: Tensor) -> Tensor:
    """Σ_d (x̂ − x)², averaged over rows: the per-token squared error every loss term uses."""
    wide = torch.promote_types(x_hat.dtype, x.dtype)
    rows = x_hat.numel() // x_hat.shape[-1] if x_hat.shape[-1] else 0
    # mse_loss: one fused pass forward and one backward; (x̂ − x).pow(2).sum(-1).mean() took 9.1 ms
    # against 4.8 at [4096, 768] with its gradient (bench/README, "Threads from torch's pool").
    return F.mse_loss(x_hat.to(wide), x.to(wide), reduction="sum") / rows


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
