"""Ablation sparsity: how sparse the effect of ablating one latent is on the LM's logits.

At a sampled token t (a position the SAE reads, with T later positions in its window), the SAE
encodes the residual x_t; every active latent l (z_l != 0) is ablated in turn by subtracting its
contribution to the reconstruction, x_hat(z) - x_hat(z with z_l = 0), from the clean residual at t
(so the SAE's error term stays and only that latent changes). For the positions t .. t+T the
change of the logits (ablated minus clean, each a V-vector) has its median over the vocabulary
subtracted (a constant shift leaves the softmax unchanged); the T+1 centred vectors are
concatenated into v of length n = (T+1) V. The sparsity of that one ablation is

    s = (||v||_1 / ||v||_2)^2 / n,

the "effective number" of changed logits as a fraction of all of them: 1/n when a single logit
moves, 1 when every entry moves by the same amount; lower is sparser. The result is the mean of
s over every (token, active latent) pair; ablations that change no logit at all are left out
and counted. The clean logits come from an unablated copy in the same batch as the ablations,
so numerical noise of different batch shapes cannot add a dense floor.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np
import torch

from saelab.errors import ConfigError
from saelab.sources.lm.text import keep_mask

DEFINITION = "(||v||_1/||v||_2)^2 / len(v), v = median-centred logit changes at the ablated token and the next T tokens, concatenated; len(v) = (T+1)*V; lower is sparser"


@dataclass(frozen=True)
class AblationConfig:
    """Which tokens, how far ahead, how many ablations per forward."""

    future: int = 4  # T
    tokens_per_window: int = 1
    max_latents_per_token: int | None = None  # None: every active latent
    batch_latents: int = 32
    seed: int = 0

    def validate(self) -> "AblationConfig":
        """Raise ConfigError naming the first bad field."""
        if isinstance(self.future, bool) or not isinstance(self.future, int) or self.future < 0:
            raise ConfigError("future", self.future, "must be an integer ≥ 0")
        for name in ("tokens_per_window", "batch_latents"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, v, "must be an integer ≥ 1")
        if self.max_latents_per_token is not None and self.max_latents_per_token < 1:
            raise ConfigError("max_latents_per_token", self.max_latents_per_token, "must be ≥ 1 or None")
        return self


def effective_fraction(v: torch.Tensor) -> torch.Tensor:
    """(||v||_1/||v||_2)^2 / len(v) of each row of v [k, n]; NaN for an all-zero row."""
    v = v.double()
    l1, l2 = v.abs().sum(-1), v.norm(dim=-1)
    return torch.where(l2 > 0, (l1 / l2.clamp_min(1e-300)) ** 2 / v.shape[-1], torch.full_like(l1, math.nan))


def centred(changes: torch.Tensor) -> torch.Tensor:
    """Each vocabulary vector [..., V] minus its median (the mean of the two middle values when V is even)."""
    return changes - torch.quantile(changes.double(), 0.5, dim=-1, keepdim=True).to(changes.dtype)


def ablation_vector(clean_logits: torch.Tensor, ablated_logits: torch.Tensor) -> torch.Tensor:
    """v [k, (T+1) V]: median-centred logit changes [k, T+1, V] of k ablations against one clean [T+1, V], concatenated."""
    change = ablated_logits.double() - clean_logits.double().unsqueeze(0)
    return centred(change).reshape(change.shape[0], -1)


@dataclass(frozen=True)
class AblationSparsityResult:
    """Mean ablation sparsity over (token, latent) pairs and what it was measured on."""

    sparsity: float | None  # mean of s over pairs (see DEFINITION)
    sparsity_token_mean: float | None  # mean over tokens of each token's mean over its latents
    effective_logits: float | None  # mean (||v||_1/||v||_2)^2, the unnormalised count
    pairs: int
    tokens: int
    zero_effect: int  # ablations that changed no logit (left out)
    mean_active: float  # active latents per sampled token
    future: int
    vocab: int
    vector_length: int
    definition: str = DEFINITION
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready dict (None where undefined)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _tail_logits(lm, ids: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits of the last `keep` positions, asking the model for only those where it can (saves the vocab matmul)."""
    params = inspect.signature(lm.model.forward).parameters
    kwargs = {"logits_to_keep": keep} if "logits_to_keep" in params else {}
    out = lm.model(input_ids=ids.to(lm.device), use_cache=False, **kwargs).logits
    return out[:, -keep:].float()


@torch.no_grad()
def ablate_at(
    lm,
    site,
    sae,
    ids: torch.Tensor,
    x: torch.Tensor,
    t: int,
    latents: torch.Tensor,
    future: int,
    batch_latents: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s [k], v-length) for ablating each of `latents` at position t of one window ids [1, >= t+future+1] whose site activation there is x [d].

    s is NaN for an ablation that changes no logit.
    """
    x_n, ctx = sae.normalizer.normalize(x[None].float())
    z = sae.encode_normalized(x_n)[0]
    full = sae.normalizer.denormalize(sae.decode_normalized(z[None]), ctx)
    seq = ids[:, : t + future + 1]
    out = []
    length = 0
    for i in range(0, len(latents), batch_latents):
        lat = latents[i : i + batch_latents]
        k = len(lat)
        zz = z.repeat(k, 1)
        zz[torch.arange(k), lat] = 0
        deltas = full - sae.normalizer.denormalize(sae.decode_normalized(zz), ctx)
        # Row 0 is the clean baseline, run in the same batch as the ablations.
        shift = torch.cat([torch.zeros_like(deltas[:1]), deltas])

        def ablate(h: torch.Tensor, shift=shift) -> torch.Tensor:
            out = h.clone()
            out[:, t] -= shift.to(device=h.device, dtype=h.dtype)
            return out

        with lm.splice(site, ablate):
            logits = _tail_logits(lm, seq.repeat(k + 1, 1), future + 1)
        v = ablation_vector(logits[0], logits[1:])
        length = v.shape[1]
        out.append(effective_fraction(v))
    return (torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)), length


@torch.no_grad()
def ablation_sparsity(
    lm,
    site,
    sae,
    batches: Iterable[torch.Tensor],
    cfg: AblationConfig = AblationConfig(),
    outlier_factor: float | None = None,
) -> AblationSparsityResult:
    """Mean ablation sparsity of the SAE's latents at sampled tokens of the windows in `batches`."""
    cfg.validate()
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    values: list[float] = []
    token_means: list[float] = []
    effective: list[float] = []
    zero, n_tokens, active_total, length = 0, 0, 0, 0
    for ids in batches:
        acts = lm.activations(ids, site)
        mask = keep_mask(acts, True, outlier_factor).cpu()
        T = ids.shape[1]
        for b in range(ids.shape[0]):
            candidates = np.flatnonzero(mask[b, : T - cfg.future].numpy())
            if len(candidates) == 0:
                continue
            for t in rng.choice(candidates, size=min(cfg.tokens_per_window, len(candidates)), replace=False):
                t = int(t)
                x = acts[b, t]
                active = torch.nonzero(sae.encode(x[None].float())[0] != 0).flatten()
                if cfg.max_latents_per_token is not None and len(active) > cfg.max_latents_per_token:
                    active = active[torch.from_numpy(rng.choice(len(active), cfg.max_latents_per_token, replace=False))]
                n_tokens += 1
                active_total += len(active)
                frac, n = ablate_at(lm, site, sae, ids[b : b + 1], x, t, active, cfg.future, cfg.batch_latents)
                length = n or length
                ok = torch.isfinite(frac)
                zero += int((~ok).sum())
                mine = frac[ok].tolist()
                values.extend(mine)
                effective.extend((frac[ok] * n).tolist())
                if mine:
                    token_means.append(float(np.mean(mine)))

    def mean(xs):
        return float(np.mean(xs)) if xs else None

    return AblationSparsityResult(mean(values), mean(token_means), mean(effective), len(values), n_tokens, zero,
                                  active_total / n_tokens if n_tokens else 0.0, cfg.future, length // (cfg.future + 1), length,
                                  seconds=time.perf_counter() - t0)  # fmt: skip


def ablation_section(results: dict[str, AblationSparsityResult], id: str = "ablation-sparsity"):
    """A report Section: one row per SAE (name -> result)."""
    from saelab.report.section import Paragraph, Section
    from saelab.report.tables import make_table

    def f(x, fmt=".4g"):
        return "–" if x is None else format(x, fmt)

    rows = [[name, f(r.sparsity), f(r.sparsity_token_mean), f(r.effective_logits, ".1f"), str(r.pairs), str(r.tokens), f(r.mean_active, ".1f")]
            for name, r in results.items()]  # fmt: skip
    table = make_table(["SAE", "sparsity (pairs)", "sparsity (token means)", "effective logits", "pairs", "tokens", "active / token"],
                       rows, numeric=[False, True, True, True, True, True, True])  # fmt: skip
    return Section.from_blocks(
        id, "Ablation sparsity", [Paragraph("Sparsity of one latent's ablation effect: " + DEFINITION + "."), table]
    )
