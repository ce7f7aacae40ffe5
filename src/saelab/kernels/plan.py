"""SparsePlan: the selection a method publishes and the sparse kernels compute exactly (the one plan type of both)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class SparsePlan:
    """How the sparse kernels compute an activation exactly: a selection of pre-activations, ReLU'd.

    `k` entries per row (or k·B over the flattened batch when `batch`, or every positive entry when
    `positive`: ReLU, ragged rows, k unused); with `extra_multiple` the
    kernels also decode each row's top min(k·extra_multiple, n) entries and add `extra_weight` ×
    their squared error as the loss term `extra_name` (Multi-TopK); with `prefixes` they decode,
    for each size m, the code's entries on latents < m alone and add `extra_weight` × the sum of
    their squared errors as `extra_name` (Matryoshka). An activation that returns a plan promises
    its dense forward equals this selection in training mode, and its `extra_losses` these terms.
    The kernels read the plan as published (kernels/topk_encode.py): k is not copied or renamed on the way.
    """

    k: int
    batch: bool = False
    positive: bool = False
    extra_multiple: int | None = None
    prefixes: tuple[int, ...] = ()
    extra_weight: float = 0.0
    extra_name: str = ""

    @property
    def sorted(self) -> bool:
        """Whether the per-row code comes sorted by decreasing pre-activation (so its first k columns are the k code)."""
        return self.extra_multiple is not None

    def width(self, n_latents: int) -> int:
        """Entries per row of the per-row selection among `n_latents` latents: k, or k·extra_multiple, at most n_latents."""
        return min(self.k * (self.extra_multiple or 1), n_latents)

    def leading(self, code: Tensor) -> Tensor:
        """The k code's columns of a sorted per-row selection [B, width]: its first k."""
        return code[:, : self.k]
