"""Progressive codes: a TopK-family SAE evaluated at other k′ (the scaling paper's Multi-TopK claim).

Each k′ keeps the trained weights and changes only how many latents the activation lets through,
so a code that is progressive loses little when k′ > k. Modes, named in every point:

- `topk`: per-token top k′ (topk, multi_topk; leaky_topk leaks the rest as it does at k).
- `threshold`: BatchTopK's inference threshold, as trained (one point, at the trained k).
- `batch_topk`: BatchTopK's training rule at evaluation, the k′·B largest activations of each
  evaluation batch of B rows, at every k′ and at the trained k, so the threshold point has a
  batch-top-k point at (nearly) the same L0 beside it. (Batch top-k keeping, per batch, exactly
  as many activations as the threshold kept would select the very same entries: a global
  threshold is a batch top-k; the two differ only in how many each batch keeps.)

One pass over the data serves every k′: the pre-activations are computed once per batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from saelab.errors import ConfigError, DataError
from saelab.evals.evaluate import as_sae, as_store, resolve_rows
from saelab.evals.reconstruction import EPS_L0
from saelab.methods import activations_with_param

# The per-token mode's label in every point (a JSON interface); it reads like the method's name, and is kept.
PER_TOKEN = "topk"


@dataclass
class KSweepPoint:
    """NMSE and L0 of the SAE evaluated at one k′ in one mode."""

    k: int
    mode: str
    l0: float
    l0_eps: float
    nmse: float
    batch_rows: int | None = None  # rows per evaluation batch (batch_topk only: its selection depends on it)

    def to_dict(self) -> dict:
        """Plain JSON-able dict; `batch_rows` only where it matters."""
        d = asdict(self)
        if d["batch_rows"] is None:
            del d["batch_rows"]
        return d


class _Sums:
    """Squared error, data variance and active counts, exact whatever the batching."""

    def __init__(self, d_in: int, eps: float):
        self.eps = eps
        self.n = 0
        self.err = 0.0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_sq_x = 0.0
        self.active = 0
        self.active_eps = 0

    def add(self, x: Tensor, x_hat: Tensor, z: Tensor) -> None:
        """Account for one batch (normalized space)."""
        x = x.double()
        self.n += x.shape[0]
        self.err += (x - x_hat.double()).pow(2).sum().item()
        self.sum_x += x.sum(dim=0).cpu()
        self.sum_sq_x += x.pow(2).sum().item()
        self.active += int((z != 0).sum())
        self.active_eps += int((z.abs() > self.eps).sum())

    def point(self, k: int, mode: str, batch_rows: int | None = None) -> KSweepPoint:
        """The finished point."""
        n = max(self.n, 1)
        total_var = self.sum_sq_x - self.n * (self.sum_x / n).pow(2).sum().item()
        nmse = self.err / total_var if total_var > 0 else math.nan
        return KSweepPoint(k, mode, self.active / n, self.active_eps / n, nmse, batch_rows)


def batch_topk_code(pre: Tensor, keep: int) -> Tensor:
    """The `keep` largest ReLU activations of the whole batch, zero elsewhere (BatchTopK's training rule)."""
    acts = torch.relu(pre)
    flat = acts.flatten()
    keep = max(0, min(int(keep), flat.numel()))
    values, indices = torch.topk(flat, keep, sorted=False)
    return torch.zeros_like(flat).scatter(0, indices, values).view_as(acts)


def parse_ks(text: str) -> list[int]:
    """`4,8,16` → [4, 8, 16]; ConfigError naming --k-sweep otherwise."""
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError("k_sweep", text, "must be a comma-separated list of integers, e.g. 4,8,16,32") from None
    if not ks:
        raise ConfigError("k_sweep", text, "must name at least one k")
    return ks


def require_k(module, given) -> None:
    """ConfigError naming `k_sweep` unless the SAE's activation has a k (the TopK family)."""
    if not hasattr(module.activation.params, "k"):
        family = ", ".join(activations_with_param("k"))
        raise ConfigError(
            "k_sweep", given, f"method {module.cfg.method!r} has no k; --k-sweep needs a TopK-family SAE ({family})"
        )


def _encoders(module, ks: Sequence[int]) -> list[tuple[int, str, Callable[[Tensor, Tensor], Tensor]]]:
    """(k, mode, code(pre, the SAE's own code)) per point."""
    act = module.activation
    if act.has_global_threshold:  # BatchTopK, Matryoshka BatchTopK: one threshold at inference, set in training
        points = [(act.params.k, "threshold", lambda pre, thr: thr)]
        batch_ks = list(dict.fromkeys([act.params.k, *ks]))
        points += [(k, "batch_topk", lambda pre, thr, k=k: batch_topk_code(pre, k * pre.shape[0])) for k in batch_ks]
        return points
    clones = [(k, act.with_params(k=k).eval()) for k in ks]
    return [(k, PER_TOKEN, lambda pre, thr, a=a: a(pre)) for k, a in clones]


@torch.no_grad()
def k_sweep(
    sae,
    data,
    ks: Sequence[int],
    *,
    rows="auto",
    batch_size: int = 8192,
    eps_l0: float = EPS_L0,
    device: str | None = None,
) -> list[KSweepPoint]:
    """NMSE and L0 of a TopK-family SAE (module or folder) at each k′ in `ks`, on `data`'s held-out rows by default."""
    module, record = as_sae(sae, device)
    require_k(module, list(ks))
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= module.cfg.n_latents:
            raise ConfigError("k_sweep", k, f"each k must be an integer in [1, n_latents={module.cfg.n_latents}]")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("batch_size", batch_size, "must be an integer ≥ 1")
    store = as_store(data)
    if store.d_in != module.cfg.d_in:
        raise DataError(f"activations={str(store.path)!r}: d_in is {store.d_in}, the SAE expects {module.cfg.d_in}")
    (lo, hi), _ = resolve_rows(rows, record, store)
    encoders = _encoders(module, list(ks))
    sums = [_Sums(module.cfg.d_in, eps_l0) for _ in encoders]
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    try:
        for start in range(lo, hi, batch_size):
            x_raw = torch.from_numpy(store.read_range(start, min(hi, start + batch_size))).to(device)
            x, _ = module.normalizer.normalize(x_raw)
            pre = module.pre_activations(x)
            thr = module.activation(pre)
            for (_, _, code), s in zip(encoders, sums):
                z = code(pre, thr)
                s.add(x, module.decode_normalized(z), z)
    finally:
        module.train(was_training)
    out = []
    for (k, mode, _), s in zip(encoders, sums):
        batch_rows = min(batch_size, hi - lo) if mode == "batch_topk" else None
        out.append(s.point(k, mode, batch_rows))
    return out
