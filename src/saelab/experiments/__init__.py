"""Experiments: sweeps, matched sparsity, intervals, scaling fits, reproductions of the papers."""
