"""Whether the sparse kernels run on an SAE's device; where an op is missing, the dense path is used and said once.

The kernels are plain torch ops (mm, index_add_, embedding_bag, sorts) written and tested on CPU.
On another device one forward and backward of a copy of the SAE, on a few random rows, is tried
once per (device type, method, AuxK); an op that device lacks fails there, not mid-training.
"""

from __future__ import annotations

import copy
import warnings

import torch

_works: dict[tuple, bool] = {}
PROBE_ROWS = 8


def runs_on(sae) -> bool:
    """Whether `sae`'s sparse training step runs on its device (probed once per device type, method and AuxK)."""
    device = sae.W_enc.device
    if device.type == "cpu":
        return True  # where the kernels are developed and tested against the dense reference
    key = (device.type, type(sae.activation).__name__, bool(sae.cfg.auxk))
    if key not in _works:
        _works[key] = _probe(sae)
    return _works[key]


def _probe(sae) -> bool:
    from saelab.kernels.step import sparse_step

    device = sae.W_enc.device
    probe = copy.deepcopy(sae)
    # A private generator: the probe must not move the run's RNG streams.
    x = torch.randn(PROBE_ROWS, sae.cfg.d_in, generator=torch.Generator().manual_seed(0)).to(device)
    dead = torch.ones(sae.cfg.n_latents, dtype=torch.bool, device=device) if sae.cfg.auxk else None
    try:
        with torch.enable_grad():
            sparse_step(probe, x, 0.0, dead).total.backward()
    except (RuntimeError, NotImplementedError, TypeError) as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        warnings.warn(
            f"saelab: the sparse kernels do not run on {device.type} ({reason}); "
            f"{sae.cfg.method} trains on the dense path there (same losses and gradients, more memory)",
            stacklevel=2,
        )
        return False
    finally:
        del probe
    return True
