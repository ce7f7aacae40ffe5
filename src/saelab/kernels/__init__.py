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
  native/         hand-written CPU kernels for the row passes (C++, built once per machine, loaded by
                  ctypes): the fused bias + TopK + AuxK selection, the latent sort, the decoder
                  backward's dots and sums in one pass; without a compiler (or SAELAB_NATIVE=0)
                  the torch operators above run instead, with the same results up to rounding

Which activations run here is each method's own fact: `Activation.sparse_plan()` returns the
selection (per-row k, batch k·B, every positive entry, extra Multi-TopK-style or nested-prefix
decodes) or None, so a new TopK-family method is one file and its registration, and nothing here
names a method. When the activation returns None (for the current mode and parameters), `kernel="auto"` trains on the dense path
(`kernel="sparse"` is refused by objective.uses_sparse_kernel), never a silently changed function.
Under bfloat16 autocast the same kernels run with bfloat16 products and float32 sums (step.py).
"""

from __future__ import annotations

from saelab.kernels.step import sparse_step
from saelab.kernels.workspace import release as release_workspace

__all__ = ["sparse_step", "release_workspace"]
