"""Matched sparsity: adapt a method's sparsity coefficient until the code's L0 meets a target.

During the warm phase (the first `warm_steps` steps) the coefficient changes once every `period`
steps (UPDATES per warm phase), by a secant step in log-log space: with L0 the mean over the
second half of the period just ended and s the slope d log L0 / d log coefficient measured
between the last two periods (clamped to a plausible range; −1 before there are two), the new
log coefficient is the old + DAMPING · (log target − log L0) / s, at most ×/÷ MAX_FACTOR. The
weights answer a new coefficient only over tens to hundreds of steps, so a controller that moves
it every step keeps pushing while L0 still lags and swings past the target (a code driven to
L0 ≈ 0 leaves latents dead for good); waiting one period lets each change show its effect, and
the measured slope adapts the step to how strongly each method responds (dimred's p moves L0
several times more than a penalty's α). After the warm phase the coefficient is held fixed, so
the rest of training optimizes one objective. The chosen value goes into saelab.json
(`target_l0` record) and the saved config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from saelab import distributed
from saelab.methods.base import SparsityKnob
from saelab.step_output import active_above, active_per_row

UPDATES = 16  # coefficient changes per warm phase
DAMPING = 0.7  # fraction of the predicted correction taken per update
SLOPE_RANGE = (0.5, 6.0)  # |d log L0 / d log coefficient| assumed between these
MAX_FACTOR = 4.0
MIN_PERIOD = 10


@dataclass
class L0Controller:
    """Target-L0 state of one SAE: the knob, its current value, the smoothed L0, the warm phase."""

    target: float
    knob: SparsityKnob
    warm_steps: int
    eps: float
    value: float
    l0_sum: float = 0.0  # L0 summed over the measured half of the current period
    l0_count: int = 0
    last: tuple[float, float] | None = None  # (log coefficient, log L0) of the previous period

    @property
    def period(self) -> int:
        """Steps between coefficient changes."""
        return max(MIN_PERIOD, self.warm_steps // UPDATES)

    @classmethod
    def for_member(cls, sae, total_steps: int, eps: float) -> "L0Controller | None":
        """A controller for an SAE whose config asks for target_l0 through a knob (None otherwise)."""
        cfg = sae.cfg
        knob = cfg.sparsity_knob() if cfg.target_l0 is not None else None
        if knob is None:
            return None
        start = read_knob(sae, knob)
        if not start > 0:
            start = knob.initial
        controller = cls(cfg.target_l0, knob, max(1, math.ceil(cfg.target_l0_warmup * total_steps)), eps, min(max(start, knob.low), knob.high))
        write_knob(sae, knob, controller.value)
        return controller

    def measure(self, z) -> float:
        """The batch L0 this knob targets: non-zeros, or entries above ε."""
        if self.knob.measure == "l0_eps":
            l0 = float(active_above(z, self.eps).double().mean())
        else:
            l0 = float(active_per_row(z).double().mean())
        return distributed.rank_mean([l0])[0]  # data-parallel: every rank moves the knob by the global L0

    @torch.no_grad()
    def update(self, sae, z, step: int) -> None:
        """After training step `step` (0-based): measure L0 late in each period, then move the knob."""
        if step >= self.warm_steps:
            return
        phase = step % self.period
        if phase >= self.period // 2:
            self.l0_sum += self.measure(z)
            self.l0_count += 1
        if phase != self.period - 1 or self.l0_count == 0:
            return
        log_l0 = math.log(max(self.l0_sum / self.l0_count, 1e-3))
        self.l0_sum, self.l0_count = 0.0, 0
        sign = -1.0 if self.knob.more_is_sparser else 1.0  # the sign d log L0 / d log coefficient should have
        log_c = math.log(self.value)
        slope = sign
        if self.last is not None and abs(log_c - self.last[0]) > 1e-6:
            measured = (log_l0 - self.last[1]) / (log_c - self.last[0])
            slope = sign * min(max(measured * sign, SLOPE_RANGE[0]), SLOPE_RANGE[1])
        self.last = (log_c, log_l0)
        step = DAMPING * (math.log(self.target) - log_l0) / slope
        step = max(-math.log(MAX_FACTOR), min(math.log(MAX_FACTOR), step))
        self.value = min(max(self.value * math.exp(step), self.knob.low), self.knob.high)
        write_knob(sae, self.knob, self.value)

    def record(self) -> dict:
        """What saelab.json keeps: the target, the parameter, the value it chose, the warm phase."""
        return {"target": self.target, "parameter": self.knob.param, "value": self.value, "warm_steps": self.warm_steps,
                "period": self.period, "measure": self.knob.measure}

    def state_dict(self) -> dict:
        """Checkpointable state (plain numbers)."""
        return {"value": self.value, "l0_sum": self.l0_sum, "l0_count": self.l0_count, "last": list(self.last) if self.last else None}

    def load_state_dict(self, sae, state: dict) -> None:
        """Restore the state and put the value back into the SAE."""
        self.value = float(state["value"])
        self.l0_sum, self.l0_count = float(state["l0_sum"]), int(state["l0_count"])
        self.last = tuple(state["last"]) if state.get("last") else None
        write_knob(sae, self.knob, self.value)


def read_knob(sae, knob: SparsityKnob) -> float:
    """The knob's current value: the SAE's alpha or an activation parameter."""
    if knob.param == "alpha":
        return float(sae.cfg.alpha)
    return float(getattr(sae.activation.params, knob.param))


def write_knob(sae, knob: SparsityKnob, value: float) -> None:
    """Set the knob in the live module and in the config that gets saved."""
    if knob.param == "alpha":
        sae.cfg.alpha = value
        return
    sae.activation.set_param(knob.param, value)
    sae.cfg.method_params = {**sae.cfg.method_params, knob.param: value}
