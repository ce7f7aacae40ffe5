"""Sparse training kernels for the TopK family; the dense path in objective.py stays the reference.

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

Covered: topk, batchtopk (training mode), multi_topk, leaky_topk with ε = 0, each with or
without AuxK, with any input normalization and the unit-norm decoder. leaky_topk with ε = 0 is
TopK exactly (non-top entries are scaled by 0, and the gradient through the threshold b is
0·x_i), so it runs TopK's kernel. With ε > 0 it does not: its non-top entries are all non-zero (each ε·x_i/b), so its decode is a dense product and
no sparse form is exact — `supports` says no and `kernel="auto"` trains it on the dense path
(`kernel="sparse"` is refused by objective.uses_sparse_kernel), never a silently changed function.
"""

from __future__ import annotations

from saelab.kernels.workspace import release as release_workspace
from saelab.methods.registry import activation_class

_METHODS = ("topk", "batchtopk", "multi_topk", "leaky_topk")


def supports(sae) -> bool:
    """Whether `sae`'s training step has an exact sparse path (same losses and gradients)."""
    if sae.penalty is not None:
        return False  # penalties read the dense code; none of these methods uses one by default
    act = sae.activation
    if getattr(act, "name", None) not in _METHODS or type(act) is not activation_class(act.name):
        return False  # a subclass may compute something else
    if act.name == "batchtopk" and not act.training:
        return False  # inference is a dense threshold, not a selection
    if act.name == "leaky_topk" and float(act.params.eps) != 0.0:
        return False
    return True


def sparse_step(sae, x_raw, alpha, dead):
    """The sparse-path counterpart of objective.dense_step."""
    from saelab.kernels.step import sparse_step as step

    return step(sae, x_raw, alpha, dead)


__all__ = ["supports", "sparse_step", "release_workspace"]
