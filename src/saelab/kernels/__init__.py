"""Sparse training kernels for the TopK family and sparse ReLU codes; the dense path in objective.py stays the reference.

A TopK-family step needs one dense product, P = (x − b_dec)·W_enc + b_enc; everything after the
selection touches only the k (or k·multiple, k_aux) selected entries per row. The sparse path:
  select.py       exact top-k / batch top-K on P, cheaper than torch.topk on whole rows
  topk_encode.py  encoder + selection + ReLU as one autograd Function (no [B, n] tensor kept for
                  backward); its backward forms the W_enc, b_enc and b_dec gradients from the entries
  decode.py       decoding by gathered decoder rows (embedding_bag) with a joint backward
  segment.py      the sparse products the backwards are built from (one latent sort per step)
  step.py         the losses, named and ordered as objective.dense_step's
  sparse_code.py  the code object StepOutput.z holds on this path
  workspace.py    reused memory for P and for W_enc's gradient (no page faults every step)
  threads.py      thread counts for the sparse passes (SAELAB_SPARSE_THREADS)

Which activations run here is each method's own fact: `Activation.sparse_plan()` returns the
selection (per-row k, batch k·B, an extra Multi-TopK-style decode) or None, so a new TopK-family
method is one file and its registration. Today topk, batchtopk (training mode), multi_topk,
leaky_topk with ε = 0 and relu (every positive entry; with no penalty or an entrywise one — l1, lp,
smoothed_l0, freshman — whose `on_entries` reads it from the code's entries) return plans (each with or without AuxK, any
input normalization, the unit-norm decoder); leaky_topk with ε > 0, relu with another penalty
and batchtopk at inference return None, and
`kernel="auto"` then trains on the dense path (`kernel="sparse"` is refused by
objective.uses_sparse_kernel), never a silently changed function.
Under bfloat16 autocast the same kernels run with bfloat16 products and float32 sums (step.py).
"""

from __future__ import annotations

from saelab.kernels.step import sparse_step
from saelab.kernels.workspace import release as release_workspace
from saelab.methods.base import Activation, SparsePlan


def _defining_class(cls: type, attr: str) -> type:
    return next(c for c in cls.__mro__ if attr in c.__dict__)


def sparse_plan(sae) -> SparsePlan | None:
    """The sparse plan `sae`'s training step can use (same losses and gradients), or None."""
    return _plan(sae.activation, sae.penalty)


def sparse_plan_for(cfg) -> SparsePlan | None:
    """The sparse plan an SAE built from `cfg` (an SAEConfig) would train with, without building its weights."""
    act_cls, act_params = cfg.activation_spec()
    penalty = cfg.penalty_spec()
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
        if not ok or not issubclass(_defining_class(type(penalty), "on_entries"), _defining_class(type(penalty), "forward")):
            return None
    return plan


def supports(sae) -> bool:
    """Whether `sae`'s training step has an exact sparse path."""
    return sparse_plan(sae) is not None


__all__ = ["sparse_plan", "sparse_plan_for", "supports", "sparse_step", "release_workspace"]
