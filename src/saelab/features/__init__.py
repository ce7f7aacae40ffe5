"""Features a person can read: top-activating examples and a dashboard, 1-d probes, N2G explanations, ablation sparsity.

One idea per module: data.py (cached activations with the token, window and position of each
row), examples.py + dashboard.py, probe1d.py + text_tasks.py, n2g.py, ablation_sparsity.py.
"""
