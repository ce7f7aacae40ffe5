"""Downstream loss: the LM's next-token CE and KL with an SAE's reconstruction spliced in at a site.

Positions that count.  Every window starts with BOS (or, without one, with a token that has no
context); its activation is an outlier that SAEs are not trained on, so position 0 is never
spliced or ablated and is left clean.  With `outlier_factor`, positions whose clean activation norm
exceeds factor x the batch median are left clean too: the same keep-mask (saelab.sources.lm.text.
keep_mask) the harvest used, so the SAE is only asked to reconstruct what it was trained on.  Every
kept position is replaced (by the reconstruction, zeros or the mean).  CE and KL are averaged over
the predictions made at positions 1 .. T-2 (each predicting token t+1): the predictions that can
see a replaced activation, the last position having no target.  Reconstruction metrics (L0, NMSE,
cosine, L2 ratio) average over the kept positions, computed in the raw activation space with
saelab.evals.reconstruction's definitions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from saelab.evals.reconstruction import ReconstructionAccumulator
from saelab.sources.lm.model import LanguageModel, Site
from saelab.sources.lm.text import keep_mask


@dataclass(frozen=True)
class DownstreamResult:
    """Downstream CE/KL with the SAE spliced in, ablation baselines and reconstruction metrics."""

    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_mean: float
    ce_recovered_zero: float
    ce_recovered_mean: float
    kl: float
    l0: float
    nmse: float
    explained_variance: float
    cos_sim: float
    l2_ratio: float
    tokens: int  # number of next-token predictions averaged in CE and KL

    def to_dict(self) -> dict:
        """JSON-ready dict; NaN (an undefined ratio) becomes None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def token_ce(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-prediction CE [batch, T-2] of positions 1..T-2 predicting tokens 2..T-1 (see module doc)."""
    pred = logits[:, 1:-1].float()
    target = input_ids[:, 2:].to(pred.device)
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none").view(target.shape)


def token_kl(clean_logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """Per-prediction KL(clean || other) [batch, T-2] over the same positions as token_ce."""
    p_log = F.log_softmax(clean_logits[:, 1:-1].float(), dim=-1)
    q_log = F.log_softmax(other_logits[:, 1:-1].float(), dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def recovered(ce_ablate: float, ce_sae: float, ce_clean: float) -> float:
    """CE loss recovered: (CE_ablate - CE_sae) / (CE_ablate - CE_clean); NaN when undefined."""
    gap = ce_ablate - ce_clean
    return (ce_ablate - ce_sae) / gap if gap != 0 else float("nan")


def replace_at(mask: torch.Tensor, values: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Splice function: x with x[mask] set to values ([n_kept, d] or one [d] row); other positions untouched."""

    def replace(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[mask.to(x.device)] = values.to(device=x.device, dtype=x.dtype)
        return out

    return replace


def sae_reconstruct(sae: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_hat, z) for activations of any leading shape, run in the SAE's dtype and device."""
    param = next(iter(sae.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else x.device
    flat = x.reshape(-1, x.shape[-1]).to(device=device, dtype=dtype)
    if hasattr(sae, "reconstruct"):
        # decode() alone stays in the normalized space for per-token (`unit`) normalization.
        x_hat, z = sae.reconstruct(flat)
    else:
        z = sae.encode(flat)
        x_hat = sae.decode(z)
    return x_hat.reshape(x.shape).to(device=x.device, dtype=x.dtype), z


@torch.no_grad()
def site_mean(
    lm: LanguageModel, site: Site, batches: Sequence[torch.Tensor], outlier_factor: float | None = None
) -> torch.Tensor:
    """Mean activation [d] at the site over the kept positions of the batches (for mean-ablation)."""
    total: torch.Tensor | None = None
    count = 0
    for ids in batches:
        acts = lm.activations(ids, site)
        rows = acts[keep_mask(acts, True, outlier_factor)].double()
        total = rows.sum(0) if total is None else total + rows.sum(0)
        count += rows.shape[0]
    if total is None or count == 0:
        raise ValueError("no positions to average")
    return (total / count).float()


@torch.no_grad()
def evaluate_downstream(
    lm: LanguageModel,
    site: Site,
    sae: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[torch.Tensor],
    outlier_factor: float | None = None,
) -> DownstreamResult:
    """CE clean / SAE-spliced / zero- and mean-ablated, KL(clean || SAE) and reconstruction metrics."""
    batches = list(batches)
    if not batches:
        raise ValueError("no batches to evaluate")
    mean = site_mean(lm, site, batches, outlier_factor)
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "mean": 0.0, "kl": 0.0}
    count = 0
    stats: ReconstructionAccumulator | None = None

    for ids in batches:
        clean_logits, acts = lm.run_with_activations(ids, site)
        mask = keep_mask(acts, True, outlier_factor)
        x = acts[mask]
        if isinstance(sae, torch.nn.Module) and hasattr(sae, "encode"):
            x_hat, z = sae_reconstruct(sae, x)
        else:
            # A plain callable (e.g. identity in tests): its output stands in for both x_hat and z.
            x_hat = sae(x)
            z = x_hat
        if stats is None:
            stats = ReconstructionAccumulator(z.shape[-1], x.shape[-1])
        stats.add(x, x_hat, z)

        sums["clean"] += float(token_ce(clean_logits, ids).sum())
        sae_logits = lm.spliced_logits(ids, site, replace_at(mask, x_hat))
        sums["sae"] += float(token_ce(sae_logits, ids).sum())
        sums["kl"] += float(token_kl(clean_logits, sae_logits).sum())
        del sae_logits
        zero_logits = lm.spliced_logits(ids, site, replace_at(mask, torch.zeros_like(mean)))
        sums["zero"] += float(token_ce(zero_logits, ids).sum())
        del zero_logits
        sums["mean"] += float(token_ce(lm.spliced_logits(ids, site, replace_at(mask, mean)), ids).sum())
        count += ids.shape[0] * (ids.shape[1] - 2)

    ce = {k: v / count for k, v in sums.items()}
    assert stats is not None
    rec = stats.result("raw")
    return DownstreamResult(
        ce_clean=ce["clean"],
        ce_sae=ce["sae"],
        ce_zero=ce["zero"],
        ce_mean=ce["mean"],
        ce_recovered_zero=recovered(ce["zero"], ce["sae"], ce["clean"]),
        ce_recovered_mean=recovered(ce["mean"], ce["sae"], ce["clean"]),
        kl=ce["kl"],
        l0=rec.l0,
        nmse=rec.nmse,
        explained_variance=rec.explained_variance,
        cos_sim=rec.cos_sim,
        l2_ratio=rec.l2_ratio,
        tokens=count,
    )
