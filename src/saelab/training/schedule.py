"""Learning-rate schedule: constant by default, optional linear warm-up and final decay."""

from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup: int, decay: str, decay_fraction: float) -> float:
    """Multiplier on the base learning rate at `step` (0-based) of `total` steps."""
    factor = 1.0
    if warmup > 0 and step < warmup:
        factor = (step + 1) / warmup
    if decay != "none" and decay_fraction > 0:
        start = total - int(round(decay_fraction * total))
        if step >= start:
            progress = (step - start + 1) / max(total - start, 1)
            tail = 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
            factor *= max(tail, 0.0)
    return factor
