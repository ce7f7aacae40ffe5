"""Reading and writing an SAE's sparsity knob (the parameter target_l0 adapts), and the level it counts above."""

from __future__ import annotations

from saelab.methods.base import SparsityKnob
from saelab.methods.resolve import sparsity_knob


def knob_owner(sae, knob: SparsityKnob):
    """The module whose class declares the knob: the SAE's penalty, else its activation."""
    penalty = getattr(sae, "penalty", None)
    return penalty if penalty is not None and type(penalty).sparsity_knob is knob else sae.activation


def target_level(sae) -> float | None:
    """The activation level above which the SAE's sparsity knob counts a latent as on, for knobs that measure "l0_level"."""
    knob = sparsity_knob(sae.cfg)
    if knob is None or knob.measure != "l0_level":
        return None
    return float(knob_owner(sae, knob).active_level())


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
