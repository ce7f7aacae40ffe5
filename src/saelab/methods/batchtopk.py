"""BatchTopK (Bussmann et al.): top k·B over the flattened batch, a global threshold at inference."""

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.kernels.plan import SparsePlan
from saelab.methods.base import Activation, param, require
from saelab.methods.registry import reads_saelens, register_activation
from saelab.methods.topk import KParams, topk_relu
from saelab.util import distributed


@register_activation("batchtopk")
@reads_saelens
class BatchTopK(Activation):
    """Training: keep the k·B largest ReLU activations of the whole batch, so each sample averages k.

    Inference: a single threshold T, the running average over training batches of the smallest
    positive activation that was kept, gives z = pre · 1[pre > T] — independent of the batch.
    """

    description = "top k·B activations over the flattened batch in training; a learned global threshold at inference"
    saelens_name = "batchtopk"
    has_global_threshold = True

    @dataclass
    class Params(KParams):
        threshold_momentum: float = param(
            0.99, "running-average weight of the inference threshold (0 = last batch only)"
        )

        def validate(self, field):
            super().validate(field)
            m = self.threshold_momentum
            require(0.0 <= m < 1.0, f"{field}.threshold_momentum", m, "must be in [0, 1)")

    def __init__(self, params, n_latents):
        super().__init__(params, n_latents)
        # -1 marks "not estimated yet": inference then falls back to per-sample TopK.
        self.register_buffer("threshold", torch.tensor(-1.0))

    def forward(self, pre: Tensor) -> Tensor:
        """Batch top-k in training, thresholded ReLU at inference."""
        acts = torch.relu(pre)
        if self.training:
            flat = acts.flatten()
            keep = min(self.params.k * pre.shape[0], flat.numel())
            threshold = distributed.kth_largest(flat, self.params.k * distributed.global_rows(pre.shape[0]))
            if threshold is not None:  # this rank's slice of a data-parallel batch: the global k·B largest
                return acts * (acts >= threshold)
            values, indices = torch.topk(flat, keep, sorted=False)
            return torch.zeros_like(flat).scatter(0, indices, values).view_as(acts)
        if self.threshold.item() < 0:
            return topk_relu(pre, self.params.k)
        return acts * (acts > self.threshold)

    def sparse_plan(self) -> SparsePlan | None:
        """Batch top-k in training; inference is a dense threshold, not a selection."""
        return SparsePlan(k=self.params.k, batch=True) if self.training else None

    @torch.no_grad()
    def observe(self, values: Tensor) -> None:
        """Fold this batch's smallest kept positive activation into the running threshold."""
        positive = values[values > 0]
        # +inf stands for "none on this rank", so every rank takes part in the minimum over ranks.
        smallest = positive.min() if positive.numel() else values.new_tensor(float("inf"))
        smallest = distributed.batch_min(smallest.to(self.threshold.dtype))
        if not torch.isfinite(smallest):
            return
        if self.threshold.item() < 0:
            self.threshold.copy_(smallest)
        else:
            m = self.params.threshold_momentum
            self.threshold.mul_(m).add_((1 - m) * smallest)

    def export_tensors(self):
        """SAELens JumpReLU form: the global threshold broadcast to every latent."""
        t = self.threshold.clamp_min(0.0)
        return {"threshold": t.expand(self.n_latents).clone()}

    def import_tensors(self, tensors):
        """Read the global threshold back from the per-latent vector."""
        if "threshold" in tensors:
            self.threshold.copy_(tensors["threshold"].max())

    @classmethod
    def from_saelens(cls, folder):
        """k from the cfg; SAELens's `topk_threshold` (absent until it estimated one: then per-sample TopK)."""
        params = {"k": folder.integer("k")}
        if "topk_threshold" not in folder.tensor_names:
            return params, {}
        stored = folder.tensor("topk_threshold").reshape(-1)
        return params, {"threshold": folder.shaped(stored, "topk_threshold", (1,))}

    def saelens_architecture(self):
        """Exported as JumpReLU with a uniform threshold (identical at inference) once one is estimated."""
        if self.threshold.item() < 0:
            return None  # inference is still per-sample TopK, which JumpReLU cannot express
        return "jumprelu", {}
