"""Typed configs for SAEs and training runs, validated at the edge, to and from JSON/TOML."""

from saelab.config.fields import (
    SAE_NEEDS,
    TRAIN_NEEDS,
    _from_dict,
    method_reads_alpha,
    option,
    require_positive_int,
)
from saelab.config.mapping import (
    SAE_FIELDS,
    TRAIN_FIELDS,
    load_toml,
    run_from_mapping,
    sae_from_flat,
    split_method_params,
)
from saelab.config.values import (
    B_DEC_INITS,
    DECAYS,
    ENCODER_INITS,
    KERNELS,
    NORMALIZATIONS,
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
    "load_toml",
    "method_reads_alpha",
    "option",
    "require_positive_int",
    "run_from_mapping",
    "sae_from_flat",
    "split_method_params",
]
