"""Shared leaves: atomic writes, JSON lines, intervals, type checks, names, distributed worlds, loggers."""
