"""Multi-TopK (scaling paper): TopK at k plus an auxiliary reconstruction at a larger k."""

from dataclasses import dataclass

from torch import Tensor

from saelab.kernels.plan import SparsePlan
from saelab.losses import squared_error
from saelab.methods.base import Activation, LossContext, param, require
from saelab.methods.registry import reads_sparsify, register_activation
from saelab.methods.topk import KParams, topk_relu


@register_activation("multi_topk")
@reads_sparsify
class MultiTopK(Activation):
    """Train with L(k) + weight·L(multiple·k) so the code stays useful at other k (default 4k, 1/8).

    Inference uses k; `with_params(k=k')` or `saelab eval --k K'` evaluates at any other k'.
    """

    description = "TopK at k plus a 1/8-weighted reconstruction loss at 4k; evaluate at any k'"
    # Exported as SAELens "topk"; such a folder reads back as TopK (methods/topk.py), the same inference map.
    saelens_name = "topk"

    @dataclass
    class Params(KParams):
        multiple: int = param(4, "the auxiliary TopK uses multiple·k latents")
        aux_weight: float = param(0.125, "weight of the auxiliary reconstruction loss")

        def validate(self, field):
            super().validate(field)
            require(
                isinstance(self.multiple, int) and self.multiple >= 1,
                f"{field}.multiple",
                self.multiple,
                "must be an integer ≥ 1",
            )
            require(float(self.aux_weight) >= 0, f"{field}.aux_weight", self.aux_weight, "must be ≥ 0")

    def forward(self, pre: Tensor) -> Tensor:
        """Per-row top-k code at the main k."""
        return topk_relu(pre, self.params.k)

    def sparse_plan(self) -> SparsePlan:
        """Top-k, plus the weighted reconstruction at multiple·k as the loss `multi_topk`."""
        return SparsePlan(
            k=self.params.k,
            extra_multiple=self.params.multiple,
            extra_weight=self.params.aux_weight,
            extra_name="multi_topk",
        )

    def extra_losses(self, ctx: LossContext) -> dict[str, Tensor]:
        """The weighted reconstruction loss of the code at multiple·k."""
        big_k = min(self.params.k * self.params.multiple, self.n_latents)
        x_hat_big = ctx.sae.decode_normalized(topk_relu(ctx.pre, big_k))
        return {"multi_topk": self.params.aux_weight * squared_error(x_hat_big, ctx.x)}

    def saelens_architecture(self):
        """At inference it is a plain TopK."""
        return "topk", {"k": self.params.k}

    @classmethod
    def reads_sparsify_cfg(cls, cfg):
        """sparsify's TopK trained with its multi_topk loss (at 4k; inference is TopK at k, as here)."""
        return cfg.get("activation", "topk") == "topk" and bool(cfg.get("multi_topk"))
