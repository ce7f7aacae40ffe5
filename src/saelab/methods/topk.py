"""TopK activation (Makhzani & Frey; Gao et al.): keep the k largest pre-activations."""

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.kernels.plan import SparsePlan
from saelab.methods.base import (
    Activation,
    Params,
    param,
    require,
    scatter_rows,
    topk_mask_values,
)
from saelab.methods.registry import reads_saelens, reads_sparsify, register_activation


@dataclass
class KParams(Params):
    """Parameters of a method with a per-sample budget of k latents."""

    k: int = param(32, "number of active latents per sample")

    def validate(self, field):
        require(isinstance(self.k, int) and self.k >= 1, f"{field}.k", self.k, "must be an integer ≥ 1")


def topk_relu(pre: Tensor, k: int) -> Tensor:
    """Dense code holding ReLU of each row's k largest pre-activations, zero elsewhere."""
    values, indices = topk_mask_values(pre, k)
    return scatter_rows(torch.relu(values), indices, pre.shape[-1])


@register_activation("topk")
@reads_saelens
@reads_sparsify
class TopK(Activation):
    """z = ReLU(TopK_k(pre)): exactly k candidates per sample, negatives dropped."""

    description = "keep the k largest pre-activations per sample (ReLU after), the scaling paper's TopK"
    saelens_name = "topk"
    saelens_activation_fn = "topk"
    Params = KParams

    def forward(self, pre: Tensor) -> Tensor:
        """Per-row top-k code."""
        return topk_relu(pre, self.params.k)

    def sparse_plan(self) -> SparsePlan:
        """The per-row top-k selection."""
        return SparsePlan(k=self.params.k)

    def saelens_architecture(self):
        """SAELens 'topk' with the same k."""
        return "topk", {"k": self.params.k}

    @classmethod
    def from_saelens(cls, folder):
        """k from the cfg; `rescale_acts_by_decoder_norm` folded into the weights."""
        k = folder.integer("k")
        if folder.cfg.get("rescale_acts_by_decoder_norm"):
            # SAELens ranks pre·‖W_dec row‖ and decodes with unit rows: the same map as these weights.
            w = folder.weights
            norms = w["W_dec"].norm(dim=-1)
            w["W_enc"], w["b_enc"] = w["W_enc"] * norms, w["b_enc"] * norms
            w["W_dec"] = w["W_dec"] / norms.clamp_min(1e-12).unsqueeze(1)
        return {"k": k}, {}

    @classmethod
    def reads_sparsify_cfg(cls, cfg):
        """sparsify's TopK (its default activation) trained without Multi-TopK's loss."""
        return cfg.get("activation", "topk") == "topk" and not cfg.get("multi_topk")
