"""Typed configs for SAEs and training runs: plain values whose fields are checked at the edge, to and from JSON/TOML."""

from saelab.config.fields import SAE_NEEDS, TRAIN_NEEDS, _from_dict, option, require_positive_int
from saelab.config.values import (
    B_DEC_INITS,
    DECAYS,
    ENCODER_INITS,
    KERNELS,
    NORMALIZATIONS,
    SAE_FIELDS,
    TRAIN_FIELDS,
    RunConfig,
    SAEConfig,
    TrainConfig,
)

__all__ = [
    "B_DEC_INITS",
    "DECAYS",
    "ENCODER_INITS",
    "KERNELS",
    "NORMALIZATIONS",
    "RunConfig",
    "SAEConfig",
    "SAE_FIELDS",
    "SAE_NEEDS",
    "TRAIN_FIELDS",
    "TRAIN_NEEDS",
    "TrainConfig",
    "_from_dict",
    "option",
    "require_positive_int",
]
