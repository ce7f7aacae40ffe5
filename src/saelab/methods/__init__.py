"""Sparsity methods: activations and penalties, each registered by name."""

from saelab.methods import (  # noqa: F401  (importing registers each method)
    batchtopk,
    dimred,
    freshman,
    jumprelu,
    l1,
    leaky_topk,
    lp,
    multi_topk,
    relu,
    smoothed_l0,
    topk,
    without_topk,
)
from saelab.methods.base import Activation, LossContext, Penalty
from saelab.methods.registry import ACTIVATIONS, PENALTIES, activation_class, penalty_class

__all__ = ["Activation", "Penalty", "LossContext", "ACTIVATIONS", "PENALTIES", "activation_class", "penalty_class"]
