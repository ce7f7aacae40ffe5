"""Where training and evaluation run (cpu, cuda, mps) and in which precision they compute (float32, bfloat16).

bfloat16 is mixed precision: the parameters, the Adam state, checkpoints and saved folders stay
float32 (the master weights), and only the forward pass computes in bfloat16 under
`torch.autocast`. Parameters stored in bfloat16 would lose Adam updates smaller than their
8 significant bits resolve (a 2e-4 step on a weight of 1 rounds away), so the SAE would stop learning
long before it converged; autocast keeps the cheap matmuls and the exact accumulation.
The sparse TopK-family kernels read the autocast dtype themselves (kernels/step.py): their dense
product, selection and decode gathers run in bfloat16, their sums and gradients in float32.
"""

from __future__ import annotations

import contextlib

import torch

from saelab.errors import ConfigError

DEVICES = ("cpu", "cuda", "mps")
DTYPES = ("float32", "bfloat16")


def device_available(name: str) -> bool:
    """Whether torch can run on device type `name` here."""
    if name == "cpu":
        return True
    if name == "cuda":
        return torch.cuda.is_available()
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        return bool(mps is not None and mps.is_available())
    return False


def check_device(name, field: str = "device") -> torch.device:
    """The torch.device for `name`; a ConfigError naming `field` when it is not one of DEVICES or not available here."""
    if name not in DEVICES:
        raise ConfigError(field, name, f"must be one of {', '.join(DEVICES)}")
    if not device_available(name):
        probe = "torch.cuda.is_available()" if name == "cuda" else "torch.backends.mps.is_available()"
        raise ConfigError(
            field,
            name,
            f"not available on this machine ({probe} is False; torch {torch.__version__}); use --{field} cpu",
        )
    return torch.device(name)


def check_dtype(name, device: str = "cpu", field: str = "dtype") -> str:
    """`name` when it is one of DTYPES and autocast computes it on `device`; else a ConfigError naming `field`."""
    if name not in DTYPES:
        raise ConfigError(field, name, f"must be one of {', '.join(DTYPES)}")
    if name != "float32" and not torch.amp.is_autocast_available(device):
        raise ConfigError(field, name, f"torch {torch.__version__} has no autocast on {device}; use float32 there")
    return name


def autocast(device: torch.device | str, dtype: str):
    """Context in which the forward pass computes in `dtype`: nothing for float32, torch.autocast for bfloat16."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype))


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on `device` (nothing to wait for on the CPU), so a timer around it measures the work."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()
