"""`saelab reproduce NAME`: run a paper's headline experiments at a budget and judge each of its claims.

One module per paper (sparsity_methods, scaling_laws, l1_sqrt, batchtopk) gives the sweeps and the
claims; claims.py judges a claim from its measured interval; budget.py sizes the runs.
"""

from __future__ import annotations

from saelab.experiments.reproduce import batchtopk, l1_sqrt, scaling_laws, sparsity_methods
from saelab.experiments.reproduce.run import PAPERS, run_reproduce

__all__ = ["PAPERS", "run_reproduce", "batchtopk", "l1_sqrt", "scaling_laws", "sparsity_methods"]
