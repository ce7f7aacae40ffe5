"""L1 penalty: Σ_i |z_i| per sample."""

from dataclasses import dataclass

from torch import Tensor

from saelab.methods.base import Params, Penalty
from saelab.methods.registry import register_penalty


@register_penalty("l1")
class L1(Penalty):
    """Mean over samples of Σ_i |z_i| (the standard SAE sparsity loss)."""

    description = "Σ|z| per sample"

    @dataclass
    class Params(Params):
        pass

    def forward(self, z: Tensor) -> Tensor:
        """Batch-mean L1 norm."""
        return z.abs().sum(dim=-1).mean()

    entrywise = True

    def on_entries(self, values: Tensor, rows: Tensor, n_rows: int) -> Tensor:
        """Σ|v| over the positive entries, over the rows: the dense value (zeros add nothing)."""
        return values.abs().sum() / n_rows
