"""Training to convergence (the scaling paper's L(N)): stop once held-out NMSE stops improving.

Every `window / CHECKS_PER_WINDOW` tokens the trainer measures each SAE's NMSE on (up to
MAX_ROWS of) its held-out rows. At a measurement after T tokens, with NMSE(T′) the latest
measurement at least `window` tokens earlier, the SAE has converged when

    NMSE(T′) − NMSE(T) < tol · NMSE(T′)

i.e. it improved by less than `tol` (relative) over the last window. T is its
`tokens_to_convergence`. The step budget (steps / tokens / epochs) stays the cap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from saelab.errors import ConfigError

CHECKS_PER_WINDOW = 4  # held-out measurements per window: the stop is at most window/4 tokens late
MAX_ROWS = 8192  # held-out rows measured: enough for a stable NMSE, cheap beside a training step


@dataclass
class ConvergenceMonitor:
    """One SAE's held-out NMSE history and whether (and when) it converged."""

    tol: float
    window: int  # tokens
    every: int  # training steps between held-out measurements
    history: list[tuple[int, float]] = field(default_factory=list)  # (tokens, held-out NMSE)
    converged_at: int | None = None  # tokens_to_convergence

    @classmethod
    def for_run(cls, train, eval_range: tuple[int, int]) -> "ConvergenceMonitor | None":
        """A monitor when the TrainConfig asks for until_converged (None otherwise); it needs held-out rows."""
        if not train.until_converged:
            return None
        if eval_range[1] <= eval_range[0]:
            raise ConfigError("until_converged", True, "needs held-out rows (eval_fraction > 0 or eval_activations)")
        every = max(1, round(train.converge_window / (CHECKS_PER_WINDOW * train.batch_size)))
        return cls(float(train.converge_tol), int(train.converge_window), every)

    @property
    def converged(self) -> bool:
        """Whether the SAE has met the criterion at some measurement."""
        return self.converged_at is not None

    def due(self, step: int) -> bool:
        """Whether to measure after `step` training steps."""
        return step % self.every == 0

    def observe(self, tokens: int, nmse: float) -> bool:
        """Record a measurement after `tokens` training tokens; True when the SAE has converged (now or before)."""
        self.history.append((int(tokens), float(nmse)))
        if self.converged_at is None:
            earlier = [v for t, v in self.history if t <= tokens - self.window]
            if (
                earlier
                and math.isfinite(earlier[-1])
                and math.isfinite(nmse)
                and earlier[-1] - nmse < self.tol * earlier[-1]
            ):
                self.converged_at = int(tokens)
        return self.converged

    def record(self) -> dict:
        """What saelab.json keeps: the criterion, the outcome and every measurement."""
        return {
            "tol": self.tol,
            "window_tokens": self.window,
            "every_steps": self.every,
            "converged": self.converged,
            "tokens_to_convergence": self.converged_at,
            "held_out_rows": MAX_ROWS,
            "history": [list(h) for h in self.history],
        }

    def state_dict(self) -> dict:
        """Checkpointable state (plain numbers)."""
        return {"history": [list(h) for h in self.history], "converged_at": self.converged_at}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved."""
        self.history = [(int(t), float(v)) for t, v in state["history"]]
        self.converged_at = None if state.get("converged_at") is None else int(state["converged_at"])


@torch.no_grad()
def held_out_nmse(sae, x_raw: Tensor) -> float:
    """Σ‖x − x̂‖² / Σ‖x − mean x‖² of raw rows, in the SAE's normalized space, with the SAE in eval mode."""
    was_training = sae.training
    sae.eval()
    try:
        x, _ = sae.normalizer.normalize(x_raw)
        x_hat = sae.decode_normalized(sae.encode_normalized(x))
    finally:
        sae.train(was_training)
    x, x_hat = x.double(), x_hat.double()
    var = (x - x.mean(dim=0)).pow(2).sum().item()
    return (x - x_hat).pow(2).sum().item() / var if var > 0 else math.nan
