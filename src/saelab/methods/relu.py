"""ReLU activation: the baseline SAE, made sparse by a penalty."""

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.kernels.plan import SparsePlan
from saelab.methods.base import Activation, Params
from saelab.methods.registry import reads_saelens, register_activation


@register_activation("relu")
@reads_saelens
class ReLU(Activation):
    """z = ReLU(pre); pair it with a penalty (l1, lp, smoothed_l0, …) for sparsity."""

    description = "z = ReLU(pre); sparsity comes from a penalty (--penalty)"
    saelens_name = "standard"

    @dataclass
    class Params(Params):
        pass

    def forward(self, pre: Tensor) -> Tensor:
        """ReLU of the pre-activations."""
        return torch.relu(pre)

    def sparse_plan(self) -> SparsePlan | None:
        """Every positive pre-activation (with no penalty or an entrywise one: methods.plans checks)."""
        return SparsePlan(k=0, positive=True)

    def saelens_architecture(self):
        """SAELens calls this architecture 'standard'."""
        return "standard", {}
