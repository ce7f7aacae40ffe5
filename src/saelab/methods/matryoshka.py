"""Matryoshka BatchTopK (Bussmann et al. / Nabeshima): nested prefixes of the dictionary each reconstruct.

The code is BatchTopK's (top k·B over the batch in training, a global threshold at inference).
The loss adds, for every proper prefix of the latents (the first n/2, n/4, … of them), the
squared error of reconstructing x from that prefix alone. Early latents must then carry the
coarse, general directions on their own, so features do not split or absorb each other as the
dictionary grows; the full dictionary's error is the ordinary reconstruction term.
"""

from dataclasses import dataclass, replace

from torch import Tensor

from saelab.kernels.plan import SparsePlan
from saelab.losses import squared_error
from saelab.methods.base import LossContext, param, require
from saelab.methods.batchtopk import BatchTopK
from saelab.methods.registry import register_activation


def prefix_sizes(n_latents: int, n_prefixes: int) -> list[int]:
    """Sizes of the proper nested prefixes: n/2^(P−1), …, n/4, n/2 (at least 1 latent, distinct)."""
    sizes = sorted({max(1, n_latents >> i) for i in range(1, n_prefixes)})
    return [m for m in sizes if m < n_latents]


@register_activation("matryoshka_batchtopk")
class MatryoshkaBatchTopK(BatchTopK):
    """BatchTopK whose loss also asks each nested prefix (n/2, n/4, …) to reconstruct x alone."""

    description = "BatchTopK plus the reconstruction loss of each nested prefix (n/2, n/4, ...) of the dictionary"

    @dataclass
    class Params(BatchTopK.Params):
        n_prefixes: int = param(4, "nested dictionaries including the full one: sizes n, n/2, ..., n/2^(P-1)")
        prefix_weight: float = param(1.0, "weight of each proper prefix's reconstruction loss")

        def validate(self, field):
            super().validate(field)
            p = self.n_prefixes
            require(
                isinstance(p, int) and not isinstance(p, bool) and p >= 1,
                f"{field}.n_prefixes",
                p,
                "must be an integer ≥ 1",
            )
            require(float(self.prefix_weight) >= 0, f"{field}.prefix_weight", self.prefix_weight, "must be ≥ 0")

    def sparse_plan(self) -> SparsePlan | None:
        """BatchTopK's selection, each proper prefix decoded from the code's entries on its latents (training only)."""
        plan = super().sparse_plan()
        if plan is None:
            return None
        sizes = prefix_sizes(self.n_latents, self.params.n_prefixes) if self.params.prefix_weight else []
        return replace(
            plan, prefixes=tuple(sizes), extra_weight=float(self.params.prefix_weight), extra_name="matryoshka"
        )

    def extra_losses(self, ctx: LossContext) -> dict[str, Tensor]:
        """prefix_weight × Σ over proper prefixes m of ‖x − (z[:, :m] W_dec[:m] + b_dec)‖²."""
        sizes = prefix_sizes(self.n_latents, self.params.n_prefixes)
        if not sizes or self.params.prefix_weight == 0:
            return {}
        sae = ctx.sae
        total = ctx.z.new_zeros(())
        for m in sizes:
            x_hat_m = ctx.z[:, :m] @ sae.W_dec[:m] + sae.b_dec
            total = total + squared_error(x_hat_m, ctx.x)
        return {"matryoshka": self.params.prefix_weight * total}
