"""Matched sparsity: adapt a method's sparsity coefficient until the code's L0 meets a target.

Start. An α that the user did not set (0, the default) is calibrated on the first batch when its
knob names the loss term it weights (`SparsityKnob.weights`: every penalty, Gated's gate L1):
α = START_SHARE · reconstruction loss / unweighted penalty, so the penalty term starts as a fixed
share of the loss whatever the penalty's scale (L1 sums magnitudes, smoothed-L0 and freshman are
bounded by 1; their good α differ by 10⁴). The first step's reconstruction loss is the untrained
one, several times the trained one, so this start lies on the dense side of the target, where no
latent has been killed yet. An explicit α, and every other knob, starts where it is configured
(or at the knob's `initial`).

Steps. During the warm phase (the first `warm_steps` steps) the coefficient changes once every
`period` steps (UPDATES per warm phase), by a damped secant step in log-log space on where L0 is
heading: with L0 the mean over the second half of the period just ended, its trend the log change
per period between the period's two halves, and s the slope d log L0 / d log coefficient measured
between the last two periods (clamped to a plausible range; 1 before there are two), the change
is DAMPING · (log target − (log L0 + HORIZON · trend)) / s. Steering by the projection matters
because the weights answer a new coefficient over tens to hundreds of steps (on OthelloGPT at
400 × 512, L0 still fell from 100 to 57 to 11 in the two periods after α stopped rising): a
controller that waits to see the target crossed has already pushed the code past it. The step is
asymmetric because the two errors are not alike: an over-sparse code loses latents (a ReLU
latent that stops firing gets no gradient back) and its reconstruction collapses, so towards
density the coefficient moves by up to ×/÷ EASE_FACTOR per period; towards sparsity by at most
×/÷ PUSH_FACTOR, never while L0 is below target, and not at all (or back) while L0 is falling fast
enough to reach the target on its own. The damping is small because the lag makes a larger gain
ring: at 0.4 the same run swung L0 between 22 and 39 every other period, growing; at 0.25 it
settled. After the warm phase the coefficient is held fixed, so the rest of training optimizes one
objective; a coefficient that had been climbing steadily to hold L0 (penalties whose pull fades as
activations grow) is frozen where that climb would be half-way through the hold. The chosen value
goes into saelab.json (`target_l0` record) and the saved config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from saelab.methods.base import SparsityKnob
from saelab.methods.knobs import read_knob, target_level, write_knob
from saelab.methods.resolve import sparsity_knob
from saelab.step_output import active_above, active_per_row
from saelab.util import distributed

UPDATES = 16  # coefficient changes per warm phase
DAMPING = 0.25  # fraction of the predicted correction taken per update
SLOPE_RANGE = (0.5, 6.0)  # |d log L0 / d log coefficient| assumed between these
EASE_FACTOR = 4.0  # largest change per period towards a denser code
PUSH_FACTOR = 1.5  # largest change per period towards a sparser code
START_SHARE = 0.2  # the calibrated penalty term's share of the first batch's reconstruction loss
HORIZON = 1.0  # periods ahead (from the middle of a period's second half) that L0's trend is projected
MIN_PERIOD = 10
DRIFT_PERIODS = 4


@dataclass
class L0Controller:
    """Target-L0 state of one SAE: the knob, its current value, the smoothed L0, the warm phase."""

    target: float
    knob: SparsityKnob
    warm_steps: int
    eps: float
    value: float
    l0_sum: float = 0.0  # L0 summed over the second half of the current period
    l0_count: int = 0
    early_sum: float = 0.0  # ... and over its first half, for the trend within the period
    early_count: int = 0
    last: tuple[float, float] | None = None  # (log coefficient, log L0) of the previous period
    slope: float = 1.0  # |d log L0 / d log coefficient| last measured (kept through a period without a change)
    calibrate: bool = False  # set the knob from the first batch's loss terms (an α the user left at 0)
    total_steps: int | None = None  # the run's length, for the hold after the warm phase
    history: list = field(default_factory=list)  # log coefficient after each update
    level: float | None = None  # the activation level counted as on, for knobs that measure "l0_level"

    @property
    def period(self) -> int:
        """Steps between coefficient changes."""
        return max(MIN_PERIOD, self.warm_steps // UPDATES)

    @classmethod
    def for_member(cls, sae, total_steps: int, eps: float) -> "L0Controller | None":
        """A controller for an SAE whose config asks for target_l0 through a knob (None otherwise)."""
        cfg = sae.cfg
        knob = sparsity_knob(cfg) if cfg.target_l0 is not None else None
        if knob is None:
            return None
        start = read_knob(sae, knob)
        unset = not start > 0
        if unset:
            start = knob.initial
        controller = cls(
            cfg.target_l0,
            knob,
            max(1, math.ceil(cfg.target_l0_warmup * total_steps)),
            eps,
            min(max(start, knob.low), knob.high),
            calibrate=unset and knob.weights is not None,
            total_steps=total_steps,
        )
        controller.level = target_level(sae)
        write_knob(sae, knob, controller.value)
        return controller

    def calibrated_value(self, losses: dict) -> float | None:
        """START_SHARE · reconstruction / unweighted penalty of one step's loss terms (None when either is missing or zero)."""
        if "mse" not in losses or self.knob.weights not in losses:
            return None
        mse, weighted = distributed.rank_mean(
            [float(losses["mse"].detach()), float(losses[self.knob.weights].detach())]
        )  # every rank starts alike
        penalty = weighted / self.value  # the step ran with α = self.value
        if not (mse > 0 and penalty > 0 and math.isfinite(mse) and math.isfinite(penalty)):
            return None
        return min(max(START_SHARE * mse / penalty, self.knob.low), self.knob.high)

    def measure(self, z) -> float:
        """The batch L0 this knob targets: non-zeros, or entries above ε."""
        if self.knob.measure in ("l0_eps", "l0_level"):
            level = self.level if self.knob.measure == "l0_level" else self.eps
            l0 = float(active_above(z, level).double().mean())
        else:
            l0 = float(active_per_row(z).double().mean())
        return distributed.rank_mean([l0])[0]  # data-parallel: every rank moves the knob by the global L0

    @torch.no_grad()
    def update(self, sae, z, step: int, losses: dict | None = None) -> None:
        """After training step `step` (0-based, with its loss terms): calibrate α at the first, measure L0 late in each period, then move the knob."""
        if self.calibrate and losses is not None:
            self.calibrate = False
            value = self.calibrated_value(losses)
            if value is not None:
                self.value = value
                write_knob(sae, self.knob, value)
        if step >= self.warm_steps:
            return
        phase = step % self.period
        if phase >= self.period // 2:
            self.l0_sum += self.measure(z)
            self.l0_count += 1
        else:
            self.early_sum += self.measure(z)
            self.early_count += 1
        if phase != self.period - 1 or self.l0_count == 0:
            return
        log_l0 = math.log(max(self.l0_sum / self.l0_count, 1e-3))
        # The two halves' means lie half a period apart: twice their log difference is L0's drift per period.
        trend = 2.0 * (log_l0 - math.log(max(self.early_sum / self.early_count, 1e-3))) if self.early_count else 0.0
        self.l0_sum, self.l0_count, self.early_sum, self.early_count = 0.0, 0, 0.0, 0
        sign = -1.0 if self.knob.more_is_sparser else 1.0  # the sign d log L0 / d log coefficient should have
        log_c, log_target = math.log(self.value), math.log(self.target)
        previous, self.last = self.last, (log_c, log_l0)
        if previous is not None and abs(log_c - previous[0]) > 1e-6:
            measured = (log_l0 - previous[1]) / (log_c - previous[0])
            self.slope = min(max(measured * sign, SLOPE_RANGE[0]), SLOPE_RANGE[1])
        # Steer by where L0 is heading, not where it is: the response to a change lags a period or more.
        projected = log_l0 + HORIZON * trend
        final = step + self.period >= self.warm_steps
        change = DAMPING * (log_target - projected) / (sign * self.slope)
        sparser = change * sign < 0  # the change lowers L0
        if sparser and log_l0 <= log_target:
            change = 0.0  # below target but climbing back on its own: never push an over-sparse code
        limit = math.log(PUSH_FACTOR if sparser else EASE_FACTOR)
        change = max(-limit, min(limit, change))
        self.history.append(log_c + change)
        if final and log_l0 > log_target + math.log(0.9):
            # A code that drifts dense at a fixed coefficient (freshman's and smoothed-L0's pull fades as
            # activations grow) needed a steadily climbing one to hold L0; freeze it where that climb
            # would be half-way through the hold, so L0 is on target on average, not only at the freeze.
            change = max(-limit, min(limit, change + self.drift_allowance(sign)))
        if change:
            self.value = min(max(self.value * math.exp(change), self.knob.low), self.knob.high)
            write_knob(sae, self.knob, self.value)

    def drift_allowance(self, sign: float) -> float:
        """At the last update: the log change that the recent steady climb of the coefficient would add by the middle of the hold."""
        k = min(DRIFT_PERIODS, len(self.history) - 1)
        if k < 1 or not self.total_steps:
            return 0.0
        rate = (self.history[-1] - self.history[-1 - k]) / k
        if rate * sign >= 0:
            return 0.0  # only a coefficient that had to keep pushing towards sparsity to hold L0
        ahead = 0.5 * max(0, self.total_steps - self.warm_steps) / self.period
        limit = math.log(PUSH_FACTOR)
        return max(-limit, min(limit, rate * ahead))

    def record(self) -> dict:
        """What saelab.json keeps: the target, the parameter, the value it chose, the warm phase."""
        return {
            "target": self.target,
            "parameter": self.knob.param,
            "value": self.value,
            "warm_steps": self.warm_steps,
            "period": self.period,
            "measure": self.knob.measure,
            **({"level": self.level} if self.level is not None else {}),
        }

    def state_dict(self) -> dict:
        """Checkpointable state (plain numbers)."""
        return {
            "value": self.value,
            "l0_sum": self.l0_sum,
            "l0_count": self.l0_count,
            "last": list(self.last) if self.last else None,
            "slope": self.slope,
            "calibrate": self.calibrate,
            "early_sum": self.early_sum,
            "early_count": self.early_count,
            "history": list(self.history),
        }

    def load_state_dict(self, sae, state: dict) -> None:
        """Restore the state and put the value back into the SAE."""
        self.value = float(state["value"])
        self.l0_sum, self.l0_count = float(state["l0_sum"]), int(state["l0_count"])
        self.last = tuple(state["last"]) if state.get("last") else None
        self.slope = float(state.get("slope", 1.0))  # checkpoints from before these fields resume with the defaults
        self.calibrate = bool(state.get("calibrate", False))
        self.early_sum, self.early_count = float(state.get("early_sum", 0.0)), int(state.get("early_count", 0))
        self.history = [float(v) for v in state.get("history", [])]
        write_knob(sae, self.knob, self.value)
