"""Which SAEs train on the sparse kernels: the activation's published plan, checked against its penalty."""

from __future__ import annotations

from saelab.kernels.plan import SparsePlan
from saelab.methods.base import Activation
from saelab.methods.resolve import resolve


def _defining_class(cls: type, attr: str) -> type:
    return next(c for c in cls.__mro__ if attr in c.__dict__)


def sparse_plan(sae) -> SparsePlan | None:
    """The sparse plan `sae`'s training step can use (same losses and gradients), or None."""
    return _plan(sae.activation, sae.penalty)


def sparse_plan_for(cfg) -> SparsePlan | None:
    """The sparse plan an SAE built from `cfg` (an SAEConfig) would train with, without building its weights."""
    parts = resolve(cfg)
    (act_cls, act_params), penalty = parts.activation, parts.penalty
    return _plan(act_cls(act_params, cfg.n_latents), None if penalty is None else penalty[0](penalty[1], cfg.n_latents))


def _plan(act, penalty) -> SparsePlan | None:
    if not isinstance(act, Activation):
        return None
    cls = type(act)
    # A subclass that redefines forward but inherits its parent's plan computes something else.
    if not issubclass(_defining_class(cls, "sparse_plan"), _defining_class(cls, "forward")):
        return None
    plan = act.sparse_plan()
    if penalty is not None:
        # A penalty reads the code: only an entrywise one on a ReLU code, whose stored entries are
        # exactly its non-zeros (a TopK code may store zeros, where f's gradient need not exist).
        ok = plan is not None and plan.positive and getattr(penalty, "entrywise", False)
        if not ok or not issubclass(
            _defining_class(type(penalty), "on_entries"), _defining_class(type(penalty), "forward")
        ):
            return None
    return plan


def supports(sae) -> bool:
    """Whether `sae`'s training step has an exact sparse path."""
    return sparse_plan(sae) is not None
