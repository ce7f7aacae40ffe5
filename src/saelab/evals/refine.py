"""Shrinkage refinement (the scaling paper's "TopK prevents activation shrinkage").

Keep each token's active set from the encoder, fix the decoder, and solve for the best
non-negative activations on that set:

    z* = argmin_{z ≥ 0, supp z ⊆ supp z_enc} ½‖x_n − b_dec − z W_dec‖²

(x_n: the SAE's normalized input, where it reconstructs x̂_n = z W_dec + b_dec). With A the
active decoder rows of one token, G = A Aᵀ and c = A (x_n − b_dec), this is a small
non-negative least squares problem per token. All tokens of a chunk are solved together by
accelerated projected gradient (FISTA, step 1/L with L ≥ λ_max(G), momentum restarted per token
when it stops helping), warm-started at the encoder's values. Convergence is checked, not
assumed: the KKT residual r = ∇ on the positive entries and min(∇, 0) on the zero ones (∇ = G z − c)
must fall below `tol` · ‖x_n − b_dec‖ for every token.

`refine_scale` is the mean over active entries of z*/z_enc: above 1 means the encoder's
activations are too small for its own decoder (shrinkage, as an L1 penalty causes).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.errors import ConfigError, DataError
from saelab.evals.evaluate import as_sae, as_store, resolve_rows

# Elements (float64) one solve chunk may hold in its [rows, m, m] Gram and [rows, m, d] row stacks.
CHUNK_ELEMENTS = 2**23
EXACT_EIG_MAX = 64  # active-set sizes up to which λ_max(G) comes from an eigendecomposition
CHECK_EVERY = 10


@dataclass
class RefineConfig:
    """How hard to solve: iteration cap, relative KKT tolerance, rows per batch read."""

    max_iter: int = 10_000
    tol: float = 1e-6
    batch_size: int = 4096

    def validate(self) -> "RefineConfig":
        """Raise ConfigError naming the first bad field."""
        for name in ("max_iter", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"refine.{name}", v, "must be an integer ≥ 1")
        if not (isinstance(self.tol, (int, float)) and math.isfinite(self.tol) and self.tol > 0):
            raise ConfigError("refine.tol", self.tol, "must be a finite number > 0")
        return self


@dataclass
class RefineResult:
    """NMSE with the encoder's activations and with the refined ones, and how much they grew."""

    refine_nmse_before: float
    refine_nmse_after: float
    refine_scale: float  # mean over active entries of refined / encoder activation (> 1: the encoder shrinks)
    refine_scale_sum: float  # Σ refined / Σ encoder activations over active entries (mass-weighted scale)
    refine_zeroed_fraction: float  # active entries the refinement sets to 0
    refine_active_entries: int
    refine_tokens: int
    refine_iterations: int  # most iterations any chunk needed
    refine_max_residual: float  # largest relative KKT residual left at the end
    refine_converged: bool
    refine_normalization: str
    refine_rows: str = "given"

    def to_dict(self) -> dict:
        """Plain JSON-able dict (keys all start with refine_, so they merge into eval output)."""
        return dataclasses.asdict(self)


@dataclass
class SolveStats:
    """What one call of `refine_active` needed."""

    iterations: int
    max_residual: float


def _lipschitz(G: Tensor) -> Tensor:
    """An upper bound on λ_max of each Gram matrix [B, m, m]: exact for small m, Gershgorin above."""
    if G.shape[-1] <= EXACT_EIG_MAX:
        bound = torch.linalg.eigvalsh(G)[..., -1] * (1.0 + 1e-9)
    else:
        # eigvalsh costs m³ per token; the row-sum bound is safe (a too-small L makes FISTA diverge) and ≤ 2-3× loose here.
        bound = G.abs().sum(dim=-1).max(dim=-1).values
    return bound.clamp_min(1e-12)


def _kkt_residual(G: Tensor, c: Tensor, z: Tensor, valid: Tensor) -> Tensor:
    """‖projected gradient‖ per row: ∇ on positive entries, its negative part on zero entries."""
    grad = torch.bmm(G, z.unsqueeze(-1)).squeeze(-1) - c
    r = torch.where(z > 0, grad, grad.clamp_max(0.0)) * valid
    return r.norm(dim=-1)


def _solve_chunk(
    A: Tensor, target: Tensor, z0: Tensor, valid: Tensor, max_iter: int, tol: float
) -> tuple[Tensor, int, float]:
    """FISTA with per-row gradient restart on min_{z≥0} ½‖target − z A‖², padded rows of A zero.

    Rows leave the iteration once their residual is below tol, so a few slow tokens do not keep
    the whole chunk iterating.
    """
    G = torch.bmm(A, A.transpose(1, 2))
    c = torch.bmm(A, target.unsqueeze(-1)).squeeze(-1)
    inv_L = (1.0 / _lipschitz(G)).unsqueeze(-1)
    scale = target.norm(dim=-1).clamp_min(1e-12)
    z = z0.clamp_min(0.0) * valid
    residual = _kkt_residual(G, c, z, valid) / scale
    todo = (residual > tol).nonzero().flatten()
    it = 0
    if len(todo):
        Gs, cs, Ls, vs, zs = G[todo], c[todo], inv_L[todo], valid[todo], z[todo]
        y, t = zs.clone(), torch.ones(len(todo), dtype=z.dtype, device=z.device)
        while it < max_iter:
            for _ in range(CHECK_EVERY):
                grad = torch.bmm(Gs, y.unsqueeze(-1)).squeeze(-1) - cs
                z_new = (y - grad * Ls).clamp_min(0.0) * vs
                # Restart where momentum points against the step just taken (O'Donoghue & Candès).
                restart = ((y - z_new) * (z_new - zs)).sum(dim=-1) > 0
                t = torch.where(restart, torch.ones_like(t), t)
                t_new = (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0
                y = z_new + ((t - 1.0) / t_new).unsqueeze(-1) * (z_new - zs)
                zs, t = z_new, t_new
                it += 1
            z[todo] = zs
            res = _kkt_residual(Gs, cs, zs, vs) / scale[todo]
            residual[todo] = res
            keep = res > tol
            if not keep.any():
                break
            todo, Gs, cs, Ls, vs, zs, y, t = (
                todo[keep],
                Gs[keep],
                cs[keep],
                Ls[keep],
                vs[keep],
                zs[keep],
                y[keep],
                t[keep],
            )
    return z, it, float(residual.max()) if residual.numel() else 0.0


@torch.no_grad()
def refine_active(
    W_dec: Tensor, target: Tensor, z: Tensor, max_iter: int = 10_000, tol: float = 1e-6
) -> tuple[Tensor, SolveStats]:
    """Refined codes [B, n]: best non-negative z' on each row's support of `z` for target ≈ z' W_dec (float64)."""
    if (z < 0).any():
        raise DataError("refinement solves for non-negative activations, but the code has negative entries")
    out_dtype = z.dtype
    W = W_dec.detach().double()
    target, z = target.double(), z.double()
    active = z > 0
    counts = active.sum(dim=-1)
    refined = torch.zeros_like(z)
    m = int(counts.max()) if counts.numel() else 0
    if m == 0:
        return refined.to(out_dtype), SolveStats(0, 0.0)
    # Each row's active latents first (topk of the 0/1 mask), padded with inactive ones marked invalid.
    _, idx = torch.topk(active.to(torch.int8), m, dim=-1)
    valid = torch.gather(active, 1, idx).double()
    z0 = torch.gather(z, 1, idx)
    rows = max(1, CHUNK_ELEMENTS // (m * m + m * W.shape[1]))
    iterations, worst = 0, 0.0
    for lo in range(0, z.shape[0], rows):
        sl = slice(lo, lo + rows)
        A = W[idx[sl]] * valid[sl].unsqueeze(-1)
        zc, its, res = _solve_chunk(A, target[sl], z0[sl], valid[sl], max_iter, tol)
        refined[sl].scatter_(1, idx[sl], zc * valid[sl])
        iterations, worst = max(iterations, its), max(worst, res)
    return refined.to(out_dtype), SolveStats(iterations, worst)


class _Sums:
    """Running float64 sums from which NMSE and the scales are exact at the end, whatever the batching."""

    def __init__(self, d_in: int):
        self.n = 0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_sq_x = 0.0
        self.err_before = 0.0
        self.err_after = 0.0
        self.ratio_sum = 0.0
        self.before_sum = 0.0
        self.after_sum = 0.0
        self.zeroed = 0
        self.active = 0

    def add(self, x: Tensor, x_before: Tensor, x_after: Tensor, z: Tensor, z_ref: Tensor) -> None:
        """Account for one batch (normalized space)."""
        x = x.double()
        self.n += x.shape[0]
        self.sum_x += x.sum(dim=0).cpu()
        self.sum_sq_x += x.pow(2).sum().item()
        self.err_before += (x - x_before.double()).pow(2).sum().item()
        self.err_after += (x - x_after.double()).pow(2).sum().item()
        active = z > 0
        zo, zr = z.double()[active], z_ref.double()[active]
        self.ratio_sum += (zr / zo).sum().item()
        self.before_sum += zo.sum().item()
        self.after_sum += zr.sum().item()
        self.zeroed += int((zr == 0).sum())
        self.active += int(active.sum())

    def nmse(self, err: float) -> float:
        """err / Σ‖x − mean‖² (NaN when the data has no variance)."""
        total_var = self.sum_sq_x - self.n * (self.sum_x / max(self.n, 1)).pow(2).sum().item()
        return err / total_var if total_var > 0 else math.nan


@torch.no_grad()
def refine_batches(sae, batches, config: RefineConfig | None = None) -> RefineResult:
    """Refinement metrics of `sae` (in eval mode) over raw batches, in its normalized space."""
    config = (config or RefineConfig()).validate()
    was_training = sae.training
    sae.eval()
    sums = _Sums(sae.cfg.d_in)
    iterations, worst = 0, 0.0
    try:
        for x_raw in batches:
            sae.check_input(x_raw, "activations")
            x, _ = sae.normalizer.normalize(x_raw)
            z = sae.encode_normalized(x)
            z_ref, stats = refine_active(sae.W_dec, x - sae.b_dec, z, config.max_iter, config.tol)
            iterations, worst = max(iterations, stats.iterations), max(worst, stats.max_residual)
            sums.add(x, sae.decode_normalized(z), sae.decode_normalized(z_ref.to(x.dtype)), z, z_ref)
    finally:
        sae.train(was_training)
    active = max(sums.active, 1)
    return RefineResult(
        refine_nmse_before=sums.nmse(sums.err_before),
        refine_nmse_after=sums.nmse(sums.err_after),
        refine_scale=sums.ratio_sum / active if sums.active else math.nan,
        refine_scale_sum=sums.after_sum / sums.before_sum if sums.before_sum > 0 else math.nan,
        refine_zeroed_fraction=sums.zeroed / active,
        refine_active_entries=sums.active,
        refine_tokens=sums.n,
        refine_iterations=iterations,
        refine_max_residual=worst,
        refine_converged=worst <= config.tol,
        refine_normalization=sae.cfg.normalize,
    )


@torch.no_grad()
def refine(sae, data, *, rows="auto", config: RefineConfig | None = None, device: str | None = None) -> RefineResult:
    """Shrinkage refinement of `sae` (module or folder) on `data` (path, store, array), held-out rows by default."""
    config = (config or RefineConfig()).validate()
    module, record = as_sae(sae, device)
    store = as_store(data)
    if store.d_in != module.cfg.d_in:
        raise DataError(f"activations={str(store.path)!r}: d_in is {store.d_in}, the SAE expects {module.cfg.d_in}")
    (lo, hi), label = resolve_rows(rows, record, store)
    device = next(module.parameters()).device

    def batches():
        for start in range(lo, hi, config.batch_size):
            yield torch.from_numpy(store.read_range(start, min(hi, start + config.batch_size))).to(device)

    result = refine_batches(module, batches(), config)
    result.refine_rows = label
    return result


class RefinedSAE(torch.nn.Module):
    """`sae` with each token's encoder activations replaced by the refined ones (for downstream CE/KL).

    `reconstruct` keeps the encoder's active set and re-fits the values with the decoder fixed, so
    splicing this module into a language model measures what shrinkage costs downstream.
    """

    def __init__(self, sae, config: RefineConfig | None = None):
        super().__init__()
        self.sae = sae
        self.config = (config or RefineConfig()).validate()
        self.stats = SolveStats(0, 0.0)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(raw-space reconstruction from the refined code, refined code) of raw activations."""
        self.sae.check_input(x)
        x_n, ctx = self.sae.normalizer.normalize(x)
        z = self.sae.encode_normalized(x_n)
        z_ref, stats = refine_active(self.sae.W_dec, x_n - self.sae.b_dec, z, self.config.max_iter, self.config.tol)
        self.stats = SolveStats(
            max(self.stats.iterations, stats.iterations), max(self.stats.max_residual, stats.max_residual)
        )
        z_ref = z_ref.to(x_n.dtype)
        return self.sae.normalizer.denormalize(self.sae.decode_normalized(z_ref), ctx), z_ref

    def encode(self, x: Tensor) -> Tensor:
        """Refined code of raw activations."""
        return self.reconstruct(x)[1]

    def forward(self, x: Tensor) -> Tensor:
        """Raw-space reconstruction from the refined code."""
        return self.reconstruct(x)[0]
