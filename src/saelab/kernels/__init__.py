"""Sparse training kernels for the TopK family; the dense path in objective.py stays the reference."""


def supports(sae) -> bool:
    """Whether `sae` can train on the sparse path (none yet: every SAE uses the dense reference)."""
    return False


def sparse_step(sae, x_raw, alpha, dead):
    """The sparse-path counterpart of objective.dense_step."""
    raise NotImplementedError("no sparse kernel is registered for this SAE")
