"""The training objective: reconstruction + penalty + the method's own terms + AuxK."""

from __future__ import annotations

import torch
from torch import Tensor

from saelab import kernels, methods
from saelab.errors import ConfigError
from saelab.kernels.device_check import runs_on
from saelab.losses import auxk_term, squared_error
from saelab.methods.base import LossContext
from saelab.step_output import StepOutput, active_per_row, fired_latents, nonzero_values

__all__ = [
    "StepOutput",
    "active_per_row",
    "fired_latents",
    "nonzero_values",
    "compute_step",
    "dense_step",
    "auxk_loss",
    "DeadLatentTracker",
]


def auxk_loss(sae, x: Tensor, x_hat: Tensor, pre: Tensor, dead: Tensor, k_aux: int) -> Tensor:
    """AuxK: reconstruct the detached residual x − x̂ from the top-k_aux dead pre-activations.

    Scaled as losses.auxk_term says (the paper's NMSE of the residual's reconstruction, times the
    batch variance of x so it sits on the scale of the raw reconstruction term). The encoder and
    b_dec get this gradient through `pre`, the dead decoder rows through the reconstruction.
    """
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    k = min(k_aux, n_dead)
    masked = pre.masked_fill(~dead, float("-inf"))
    values, indices = torch.topk(masked, k, dim=-1, sorted=False)
    z_aux = pre.new_zeros(pre.shape).scatter(-1, indices, torch.relu(values))
    residual = (x - x_hat).detach()
    return auxk_term(z_aux @ sae.W_dec, residual, x)


def uses_sparse_kernel(sae) -> bool:
    """Whether this SAE's step runs on the sparse TopK-family kernels."""
    kernel = sae.cfg.kernel
    if kernel == "dense":
        return False
    ok = methods.supports(sae)
    if kernel == "sparse" and not ok:
        raise ConfigError("kernel", "sparse", f"method {sae.cfg.method!r} with these options has no sparse path")
    return ok and runs_on(sae)  # under autocast too: the kernels read its dtype (kernels/step.py)


# A ReLU code denser than this trains on the dense path for that step: the sparse path's per-entry
# work overtakes the dense products near 0.15–0.18 of the entries (bench/dense_step.py --relu-density, ReLU+L1
# at d 128, n 1,024 and 4,096, batch 2,048: dense/sparse 2.1–4.2× at 0.01–0.03, 1.6–2.0× at 0.1, 1.0–1.3× at 0.15,
# 0.75–0.97× at 0.2; bench/results/2026-12-02-cpu2-avx2-relu-density.jsonl).
RELU_SPARSE_MAX_DENSITY = 0.1


def compute_step(sae, x_raw: Tensor, alpha: float, dead: Tensor | None) -> StepOutput:
    """Forward the SAE on a raw batch and return every loss term (the trainer sums them)."""
    if uses_sparse_kernel(sae):
        # kernel="sparse" is the user's explicit choice: the kernels then run whatever the code's density.
        limit = RELU_SPARSE_MAX_DENSITY if sae.cfg.kernel == "auto" else None
        sparse = kernels.sparse_step(sae, x_raw, alpha, dead, max_density=limit)
        if sparse is not None:
            return sparse
    return dense_step(sae, x_raw, alpha, dead)


def dense_step(sae, x_raw: Tensor, alpha: float, dead: Tensor | None) -> StepOutput:
    """The reference path: plain autograd over dense [B, n] tensors."""
    cfg = sae.cfg
    x, _ = sae.normalizer.normalize(x_raw)
    pre = sae.pre_activations(x)
    z = sae.activate(pre)
    x_hat = sae.decode_normalized(z)
    losses = {"mse": squared_error(x_hat, x)}
    if sae.penalty is not None:
        scored = z * sae.decoder_norms() if cfg.penalty_decoder_norm else z
        losses["penalty"] = alpha * sae.penalty(scored)
    losses.update(sae.activation.extra_losses(LossContext(sae=sae, x=x, pre=pre, z=z, x_hat=x_hat, alpha=alpha)))
    if cfg.auxk and dead is not None:
        losses["auxk"] = cfg.aux_coef * auxk_loss(sae, x, x_hat, pre, dead, cfg.k_aux)
    return StepOutput(losses=losses, x=x, pre=pre, z=z, x_hat=x_hat)


class DeadLatentTracker:
    """Counts, per latent, the training tokens seen since it last fired."""

    def __init__(self, n_latents: int, dead_tokens: int, device: torch.device | str = "cpu"):
        self.dead_tokens = dead_tokens
        self.since_fired = torch.zeros(
            n_latents, dtype=torch.long, device=device
        )  # beside the codes it is updated from

    @torch.no_grad()
    def update(self, fired: Tensor, n_tokens: int) -> None:
        """Account for one batch of `n_tokens` in which the latents `fired` were active."""
        self.since_fired += n_tokens
        self.since_fired.masked_fill_(fired, 0)

    def dead_mask(self) -> Tensor:
        """Latents silent for at least `dead_tokens` tokens."""
        return self.since_fired >= self.dead_tokens

    def state_dict(self) -> dict:
        """Checkpointable state."""
        return {"since_fired": self.since_fired.clone(), "dead_tokens": self.dead_tokens}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict`."""
        self.since_fired = state["since_fired"].to(self.since_fired.device).clone()  # a checkpoint is read onto the CPU
        self.dead_tokens = state["dead_tokens"]
