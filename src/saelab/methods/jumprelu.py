"""JumpReLU (Rajamanoharan et al.): a learned per-latent threshold trained through an L0 penalty."""

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from saelab.methods.base import (
    Activation,
    LossContext,
    Params,
    SparsityKnob,
    param,
    require,
)
from saelab.methods.registry import reads_saelens, register_activation


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLUFn(torch.autograd.Function):
    """z = pre·H(pre − θ); ∂z/∂pre = H(pre − θ), ∂z/∂θ = −(θ/ε)·K((pre − θ)/ε) (straight-through)."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > theta)
        grad_theta = (-(theta / eps) * _rectangle((pre - theta) / eps) * grad).sum(dim=0)
        return grad_pre, grad_theta, None


class _StepFn(torch.autograd.Function):
    """H(pre − θ); no gradient to pre, ∂H/∂θ = −(1/ε)·K((pre − θ)/ε) (straight-through)."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = (-(1.0 / eps) * _rectangle((pre - theta) / eps) * grad).sum(dim=0)
        return torch.zeros_like(pre), grad_theta, None


@register_activation("jumprelu")
@reads_saelens
class JumpReLU(Activation):
    """z_i = pre_i if pre_i > θ_i else 0; θ = exp(log θ) learned via pseudo-derivatives, L0 penalty added."""

    description = "per-latent learned threshold (straight-through estimator) with an L0 penalty"
    saelens_name = "jumprelu"
    sparsity_knob = SparsityKnob(param="l0_coef", initial=1e-3)

    @dataclass
    class Params(Params):
        init_threshold: float = param(0.001, "initial threshold of every latent")
        bandwidth: float = param(0.001, "width ε of the rectangle kernel in the pseudo-derivatives")
        l0_coef: float = param(1e-3, "coefficient of the L0 penalty (mean active latents per sample)")
        threshold_init: str = param(
            "fixed",
            "'fixed': θ starts at init_threshold; 'target': with target_l0 set, θ starts "
            "at the init sample's pre-activation level that target_l0 latents per row pass",
        )

        def validate(self, field):
            require(
                self.threshold_init in ("target", "fixed"),
                f"{field}.threshold_init",
                self.threshold_init,
                "must be 'target' or 'fixed'",
            )
            require(float(self.init_threshold) > 0, f"{field}.init_threshold", self.init_threshold, "must be > 0")
            require(float(self.bandwidth) > 0, f"{field}.bandwidth", self.bandwidth, "must be > 0")
            require(float(self.l0_coef) >= 0, f"{field}.l0_coef", self.l0_coef, "must be ≥ 0")

    def __init__(self, params, n_latents):
        super().__init__(params, n_latents)
        start = torch.log(torch.tensor(float(params.init_threshold)))
        self.log_threshold = torch.nn.Parameter(start.repeat(n_latents))

    @torch.no_grad()
    def initialize_from_pre(self, pre: Callable[[], Tensor], target_l0: float | None) -> None:
        """With a target L0 and threshold_init 'target': θ = the level that target_l0 entries per row pass."""
        # θ is learned in log space, so Adam moves it by about a factor e^lr per step: from the default
        # 0.001 to the O(1) level a code of tens of latents needs takes ~7,000 steps at lr 1e-3, longer
        # than a short run (OthelloGPT, 512 latents, 2,343 steps: L0 stayed ≈ 320 whatever the target).
        # Not the default: the first steps' reconstruction overshoot then cuts L0 to about a third
        # (OthelloGPT 32 → 12, 64 → 21; toy 6 → 2) and it climbs back while the controller has eased
        # l0_coef, ending past the target on the toy data (9.7 for 6; from a fixed 0.2: 6.2).
        if self.params.threshold_init != "target" or target_l0 is None:
            return
        values = pre().detach().float().flatten()
        if values.numel() == 0:
            return
        keep = min(max(float(target_l0) / self.n_latents, 0.0), 1.0)
        level = torch.quantile(values[: 2**24], 1.0 - keep)  # torch.quantile's input limit
        self.log_threshold.fill_(float(level.clamp_min(float(self.params.init_threshold)).log()))

    @property
    def threshold(self) -> Tensor:
        """Per-latent threshold θ > 0."""
        return self.log_threshold.exp()

    def forward(self, pre: Tensor) -> Tensor:
        """Thresholded pre-activations."""
        return _JumpReLUFn.apply(pre, self.threshold, float(self.params.bandwidth))

    def extra_losses(self, ctx: LossContext) -> dict[str, Tensor]:
        """l0_coef · mean over samples of the number of latents above threshold."""
        step = _StepFn.apply(ctx.pre, self.threshold, float(self.params.bandwidth))
        return {"l0": self.params.l0_coef * step.sum(dim=-1).mean()}

    def export_tensors(self):
        """The threshold vector, as SAELens stores it."""
        return {"threshold": self.threshold.detach().clone()}

    def import_tensors(self, tensors):
        """Read the threshold vector back."""
        with torch.no_grad():
            self.log_threshold.copy_(tensors["threshold"].clamp_min(1e-30).log())

    @classmethod
    def from_saelens(cls, folder):
        """The per-latent threshold vector."""
        return {}, {"threshold": folder.tensor("threshold", (folder.n_latents,))}

    def saelens_architecture(self):
        """SAELens 'jumprelu'."""
        return "jumprelu", {}
