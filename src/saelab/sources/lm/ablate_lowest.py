"""Ablating an SAE's lowest activations (the L1(sqrt) post): four schemes swept into (L0, MSE, CE) curves.

Schemes, each zeroing latents z[i, j] judged "low":
  lowest_k          the k smallest active latents of each datapoint i;
  frac_of_max       z[i, j] < frac * max_i z[i, j]  (per-feature fraction of its max);
  quantile          z[i, j] < the q-quantile of feature j's nonzero activations;
  global_threshold  z[i, j] < t, one threshold for all features.
Per-feature statistics (max, quantiles) come from the evaluated tokens themselves.  Positions
spliced and counted are those of saelab.sources.lm.downstream (position 0 and norm outliers left clean).
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from saelab.evals.reconstruction import ReconstructionAccumulator
from saelab.sources.lm.downstream import replace_at, token_ce
from saelab.sources.lm.model import LanguageModel, Site
from saelab.sources.lm.text import keep_mask
from saelab.util.atomic import atomic_write_bytes, dumps_json

SCHEMES = ("lowest_k", "frac_of_max", "quantile", "global_threshold")


@dataclass(frozen=True)
class SweepGrid:
    """Parameter values swept for each scheme; global thresholds default to quantiles of all nonzero z."""

    lowest_k: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)
    frac_of_max: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
    quantile: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
    global_threshold: Sequence[float] | None = None
    global_quantiles: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class AblationPoint:
    """One point of a sweep: the scheme's parameter and what it did to L0, MSE and CE."""

    scheme: str
    param: float
    l0: float
    mse: float  # mean over tokens of sum_d (x - x_hat)^2, raw activation space
    nmse: float  # sum of squared errors over sum of squared deviations from the mean
    ce: float


@dataclass
class AblationSweep:
    """All points of the four sweeps plus the unablated SAE and the clean CE."""

    model: str
    site: str
    layer: int
    tokens: int
    ce_clean: float
    baseline: AblationPoint
    points: list[AblationPoint] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready dict grouping points by scheme."""
        return {
            "model": self.model,
            "site": self.site,
            "layer": self.layer,
            "tokens": self.tokens,
            "ce_clean": self.ce_clean,
            "baseline": asdict(self.baseline),
            "schemes": {s: [asdict(p) for p in self.points if p.scheme == s] for s in SCHEMES},
        }


def ablate_lowest_k(z: torch.Tensor, k: int) -> torch.Tensor:
    """Zero the k smallest positive latents of each row."""
    k = min(int(k), z.shape[-1])
    if k <= 0:
        return z.clone()
    masked = torch.where(z > 0, z, torch.full_like(z, float("inf")))
    idx = torch.topk(masked, k, dim=-1, largest=False).indices
    out = z.clone()
    # Rows with fewer than k active latents pick some inactive (inf) ones: zeroing those is harmless.
    out.scatter_(-1, idx, 0.0)
    return out


def ablate_below(z: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """Zero latents below a threshold (a scalar, or one value per feature broadcast over rows)."""
    return torch.where(z < threshold, torch.zeros_like(z), z)


def feature_quantiles(z: torch.Tensor, qs: Sequence[float], chunk: int = 1024) -> torch.Tensor:
    """[len(qs), n_latents] lower quantiles of each feature's positive activations (+inf if never active)."""
    n, m = z.shape
    out = torch.full((len(qs), m), float("inf"))
    q = torch.tensor(list(qs), dtype=torch.float64)
    # torch.quantile refuses large inputs and has no "ignore zeros": sort positives per feature instead.
    for start in range(0, m, chunk):
        block = z[:, start : start + chunk]
        counts = (block > 0).sum(0)
        ordered = torch.where(block > 0, block, torch.full_like(block, float("inf"))).sort(dim=0).values
        idx = (q[:, None] * (counts[None, :] - 1).clamp_min(0)).floor().long()
        vals = ordered.gather(0, idx.clamp_max(n - 1))
        out[:, start : start + chunk] = torch.where(counts[None, :] > 0, vals, torch.full_like(vals, float("inf")))
    return out


def global_thresholds(z: torch.Tensor, qs: Sequence[float]) -> list[float]:
    """Quantiles of all positive latent values: a threshold grid on the SAE's own scale."""
    pos = z[z > 0].double().numpy()
    if pos.size == 0:
        return [0.0 for _ in qs]
    return [float(v) for v in np.quantile(pos, list(qs))]


def _scheme_transforms(
    z: torch.Tensor, grid: SweepGrid
) -> list[tuple[str, float, Callable[[torch.Tensor], torch.Tensor]]]:
    """(scheme, param, transform of z) for every sweep point, with statistics taken from z."""
    fmax = z.max(dim=0).values
    fq = feature_quantiles(z, grid.quantile)
    thresholds = (
        grid.global_threshold if grid.global_threshold is not None else global_thresholds(z, grid.global_quantiles)
    )
    plan: list[tuple[str, float, Callable[[torch.Tensor], torch.Tensor]]] = []
    plan += [("lowest_k", float(k), lambda t, k=k: ablate_lowest_k(t, k)) for k in grid.lowest_k]
    plan += [("frac_of_max", float(f), lambda t, f=f: ablate_below(t, f * fmax)) for f in grid.frac_of_max]
    plan += [("quantile", float(q), lambda t, i=i: ablate_below(t, fq[i])) for i, q in enumerate(grid.quantile)]
    plan += [("global_threshold", float(t0), lambda t, t0=t0: ablate_below(t, t0)) for t0 in thresholds]
    return plan


@torch.no_grad()
def sweep_ablations(
    lm: LanguageModel,
    site: Site,
    sae: torch.nn.Module,
    batches: Iterable[torch.Tensor],
    grid: SweepGrid = SweepGrid(),
    outlier_factor: float | None = None,
) -> AblationSweep:
    """Run every scheme over its grid; each point decodes the ablated latents and splices them into the LM."""
    batches = list(batches)
    if not batches:
        raise ValueError("no batches to evaluate")
    param = next(iter(sae.parameters()))
    xs, zs, ctxs, masks, ce_clean, count = [], [], [], [], 0.0, 0
    for ids in batches:
        logits, acts = lm.run_with_activations(ids, site)
        mask = keep_mask(acts, True, outlier_factor)
        x = acts[mask]
        masks.append(mask)
        xs.append(x)
        # Keep each token's normalization context: a per-token (`unit`) normalization can only be
        # undone with it, so decode() alone would splice normalized-space vectors into the LM.
        x_n, ctx = sae.normalizer.normalize(x.to(param.device, param.dtype))
        ctxs.append(ctx)
        zs.append(sae.encode_normalized(x_n))
        ce_clean += float(token_ce(logits, ids).sum())
        count += ids.shape[0] * (ids.shape[1] - 2)
    z_all = torch.cat(zs).float().cpu()

    def point(scheme: str, value: float, transform: Callable[[torch.Tensor], torch.Tensor]) -> AblationPoint:
        stats, ce = ReconstructionAccumulator(z_all.shape[-1], xs[0].shape[-1]), 0.0
        for ids, x, z, ctx, mask in zip(batches, xs, zs, ctxs, masks, strict=True):
            z2 = transform(z.float().cpu()).to(z.device, z.dtype)
            x_hat = sae.normalizer.denormalize(sae.decode_normalized(z2), ctx).to(x.device, x.dtype)
            stats.add(x, x_hat, z2)
            logits = lm.spliced_logits(ids, site, replace_at(mask, x_hat))
            ce += float(token_ce(logits, ids).sum())
        rec = stats.result("raw")
        return AblationPoint(scheme, value, rec.l0, rec.mse, rec.nmse, ce / count)

    baseline = point("none", 0.0, lambda t: t)
    sweep = AblationSweep(lm.name, site.kind, site.layer, count, ce_clean / count, baseline)
    for scheme, value, transform in _scheme_transforms(z_all, grid):
        # Transforms see one batch at a time but use statistics of all batches (closed over above).
        sweep.points.append(point(scheme, value, transform))
    return sweep


def plot_sweep(sweep: AblationSweep) -> bytes:
    """PNG bytes of the L0-CE and L0-MSE curves, one line per scheme."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ce, ax_mse) = plt.subplots(1, 2, figsize=(11, 4.2))
    for scheme in SCHEMES:
        pts = sorted((p for p in sweep.points if p.scheme == scheme), key=lambda p: p.l0)
        pts.append(sweep.baseline)
        pts.sort(key=lambda p: p.l0)
        ax_ce.plot([p.l0 for p in pts], [p.ce for p in pts], marker="o", ms=3, label=scheme)
        ax_mse.plot([p.l0 for p in pts], [p.mse for p in pts], marker="o", ms=3, label=scheme)
    for ax in (ax_ce, ax_mse):
        ax.plot(
            [sweep.baseline.l0], [sweep.baseline.ce if ax is ax_ce else sweep.baseline.mse], "k*", ms=10, label="SAE"
        )
        ax.set_xlabel("L0 (active latents per token)")
        ax.grid(alpha=0.3)
    ax_ce.axhline(sweep.ce_clean, color="gray", ls="--", label="clean CE")
    ax_ce.set_ylabel("CE with reconstruction spliced (nats)")
    ax_mse.set_ylabel("MSE")
    ax_ce.legend(fontsize=8)
    model = os.path.basename(sweep.model.rstrip("/")) or sweep.model  # a full path would not fit
    fig.suptitle(f"{model} {sweep.site}@{sweep.layer}: ablating the lowest activations ({sweep.tokens} predictions)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def write_sweep(sweep: AblationSweep, out_dir: str) -> tuple[str, str]:
    """Write ablate_lowest.json and ablate_lowest.png into out_dir atomically; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "ablate_lowest.json")
    png_path = os.path.join(out_dir, "ablate_lowest.png")
    atomic_write_bytes(json_path, (dumps_json(sweep.to_dict(), indent=2) + "\n").encode())
    atomic_write_bytes(png_path, plot_sweep(sweep))
    return json_path, png_path
