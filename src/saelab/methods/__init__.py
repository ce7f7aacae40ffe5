"""Sparsity methods: activations and penalties, each registered by name."""

from saelab.kernels.plan import SparsePlan
from saelab.methods import (  # noqa: F401  (importing registers each method)
    batchtopk,
    dimred,
    freshman,
    gated,
    jumprelu,
    l1,
    leaky_topk,
    lp,
    matryoshka,
    multi_topk,
    relu,
    smoothed_l0,
    topk,
    without_topk,
)
from saelab.methods.base import (
    Activation,
    LossContext,
    Penalty,
    SparsityKnob,
)
from saelab.methods.plans import sparse_plan, sparse_plan_for, supports
from saelab.methods.registry import (
    ACTIVATIONS,
    PENALTIES,
    activation_class,
    activations_with_param,
    build_params,
    param_names,
    penalty_class,
    register_activation,
    register_penalty,
)

__all__ = [
    "Activation", "Penalty", "LossContext", "SparsePlan", "SparsityKnob", "sparse_plan", "sparse_plan_for", "supports", "ACTIVATIONS", "PENALTIES", "activation_class",
    "activations_with_param", "penalty_class", "build_params", "param_names", "register_activation", "register_penalty",
]  # fmt: skip
