"""Evaluations: one module per metric family, each returning a typed result."""
