"""Gated SAE (Rajamanoharan et al. 2024): a gate decides which latents fire, a magnitude path how much.

With x̃ = x − b_dec and the shared projection u = x̃·W_enc,

    π_gate = u + b_gate,   π_mag = exp(r_mag) ⊙ u + b_mag,   f = 1[π_gate > 0] ⊙ ReLU(π_mag),

and the loss is ‖x − x̂(f)‖² + α·Σ_i ReLU(π_gate)_i·‖W_dec,i‖ + aux_weight·‖x − (ReLU(π_gate)·sg(W_dec) + sg(b_dec))‖².
The Heaviside passes no gradient, so the gate learns only from the sparsity term and from the
auxiliary reconstruction through ReLU(π_gate); the stop-gradients sg keep that auxiliary term
from bending the decoder towards the gate's (shrunk) magnitudes.

How it fits the one Activation interface: the SAE's b_enc *is* b_gate, so `pre`, which the
objective, AuxK, LossContext and every eval see, is π_gate: "how close is this latent to firing".
The magnitude path needs u without the bias, so this activation sets `takes_encoder_bias` and the
SAE calls forward(pre, b_enc), from which u = pre − b_enc. That subtraction cancels b_enc's
gradient exactly (+1 − 1), so the main reconstruction gives b_gate none, as in the paper. Two
alternatives were worse: the SAE handing over u itself would make every caller build a second
[B, n] tensor, and an activation owning b_gate would leave b_enc a dead parameter and make `pre`
bias-free for this method alone. Every other activation keeps forward(pre). In the weights file
b_enc is written under SAELens's name b_gate (`saelens_encoder_bias`), beside r_mag and b_mag,
so SAELens's "gated" architecture reads the folder as it is. The sparsity coefficient is the SAE's
`alpha` (as for a penalty), so `target_l0` steers it the same way.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.errors import DataError
from saelab.losses import squared_error
from saelab.methods.base import (
    Activation,
    LossContext,
    Params,
    SparsityKnob,
    param,
    require,
)
from saelab.methods.registry import reads_saelens, register_activation


@register_activation("gated")
@reads_saelens
class Gated(Activation):
    """f = 1[π_gate > 0] ⊙ ReLU(exp(r_mag) ⊙ u + b_mag), π_gate = u + b_enc; gate L1 (α) and auxiliary losses added."""

    description = "gate 1[pi_gate>0] picks latents, a rescaled magnitude path sizes them; L1 on the gate (--alpha) plus gate reconstruction"
    sparsity_knob = SparsityKnob(param="alpha", initial=1e-4, weights="gate_l1")
    takes_encoder_bias = True
    saelens_encoder_bias = "b_gate"
    saelens_name = "gated"

    @dataclass
    class Params(Params):
        aux_weight: float = param(
            1.0, "weight of the auxiliary reconstruction from ReLU(pi_gate) through the frozen decoder"
        )

        def validate(self, field):
            require(float(self.aux_weight) >= 0, f"{field}.aux_weight", self.aux_weight, "must be ≥ 0")

    def __init__(self, params, n_latents):
        super().__init__(params, n_latents)
        # r_mag = b_mag = 0 (with b_gate = b_enc = 0) starts the magnitude path equal to the gate path.
        self.r_mag = torch.nn.Parameter(torch.zeros(n_latents))
        self.b_mag = torch.nn.Parameter(torch.zeros(n_latents))

    def forward(self, pre: Tensor, b_enc: Tensor) -> Tensor:
        """Gate 1[pre > 0] times ReLU of the magnitude pre-activations, with pre = π_gate and b_enc = b_gate."""
        magnitude = torch.relu(self.r_mag.exp() * (pre - b_enc) + self.b_mag)
        return (pre > 0).to(magnitude.dtype) * magnitude

    def extra_losses(self, ctx: LossContext) -> dict[str, Tensor]:
        """α·Σ ReLU(π_gate)·‖W_dec row‖ and aux_weight·‖x − (ReLU(π_gate)·sg(W_dec) + sg(b_dec))‖², batch means."""
        sae = ctx.sae
        gate = torch.relu(ctx.pre)
        losses = {"gate_l1": ctx.alpha * (gate * sae.decoder_norms()).sum(dim=-1).mean()}
        if self.params.aux_weight > 0:
            via_gate = gate @ sae.W_dec.detach() + sae.b_dec.detach()
            losses["gate_aux"] = self.params.aux_weight * squared_error(via_gate, ctx.x)
        return losses

    def export_tensors(self):
        """r_mag and b_mag, as SAELens stores them (b_enc is saved as b_gate)."""
        return {"r_mag": self.r_mag.detach().clone(), "b_mag": self.b_mag.detach().clone()}

    def import_tensors(self, tensors):
        """Read r_mag and b_mag back (DataError naming a missing or mis-shaped one)."""
        for name in ("r_mag", "b_mag"):
            if name not in tensors:
                raise DataError(f"gated SAE weights: missing tensor {name!r}")
            if tuple(tensors[name].shape) != (self.n_latents,):
                raise DataError(
                    f"gated SAE weights: {name} has shape {tuple(tensors[name].shape)}, expected ({self.n_latents},)"
                )
        with torch.no_grad():
            self.r_mag.copy_(tensors["r_mag"])
            self.b_mag.copy_(tensors["b_mag"])

    @classmethod
    def from_saelens(cls, folder):
        """r_mag and b_mag (b_enc was read from b_gate)."""
        n = folder.n_latents
        return {}, {"r_mag": folder.tensor("r_mag", (n,)), "b_mag": folder.tensor("b_mag", (n,))}

    @classmethod
    def shift_saelens_input(cls, extra, shift):
        """The magnitude path sees b_enc's shift through exp(r_mag)."""
        return {**extra, "b_mag": extra["b_mag"] + extra["r_mag"].exp() * shift}

    def saelens_architecture(self):
        """SAELens 'gated'."""
        return "gated", {}
