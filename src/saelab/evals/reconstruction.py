"""Reconstruction and sparsity metrics, streamed over batches, in the SAE's normalized space."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from saelab.errors import DataError, SaelabError
from saelab.methods.knobs import target_level
from saelab.util.intervals import bootstrap_sums

DENSE_THRESHOLD = 0.1  # a latent firing on more than 10% of tokens counts as dense
DENSITY_BINS = np.linspace(-8.0, 0.0, 33)  # log10 firing density
# log10 of non-zero activation values, 0.2-decade bins; fixed edges make the counts independent of batching.
VALUE_BINS = np.linspace(-6.0, 3.0, 46)
EPS_L0 = 0.01  # l0_eps counts latents above this: leaky codes leave tiny non-zeros everywhere
BLOCK_ROWS = 64  # bootstrap unit: contiguous rows, so a game's or a document's positions stay together
N_BOOT = 500


@dataclass
class ReconstructionResult:
    """Metrics of an SAE on a set of activations; computed in the SAE's normalized input space."""

    l0: float  # mean number of non-zero latents per token
    l0_eps: float  # mean number of latents above eps_l0 per token
    nmse: float  # Σ‖x − x̂‖² / Σ‖x − mean(x)‖²
    explained_variance: float  # 1 − nmse: variance explained around the mean, not around zero
    mse: float  # mean over tokens of Σ_d (x − x̂)²
    cos_sim: float  # mean cosine similarity of x̂ and x (over tokens with x ≠ 0)
    l2_ratio: float  # mean ‖x̂‖ / ‖x‖ (over tokens with x ≠ 0)
    relative_reconstruction_bias: float  # γ = E‖x̂‖² / E⟨x̂, x⟩ (1 = no shrinkage)
    dead_fraction: float  # latents that never fire on these tokens
    dense_fraction: float  # latents firing on more than 10% of tokens
    tokens: int
    normalization: str
    firing_density_hist: dict = field(default_factory=dict)  # log10 density bin edges → counts
    active_latents_hist: dict = field(default_factory=dict)  # number active → tokens
    activation_value_hist: dict = field(default_factory=dict)  # log10 |non-zero activation| bin edges → counts
    mmcs: float | None = None  # mean max cosine similarity to a true dictionary
    dead_fraction_eps: float | None = (
        None  # latents never above eps_l0: a relative leak makes every latent non-zero sometimes
    )
    eps_l0: float = EPS_L0
    ci: dict = field(default_factory=dict)  # metric → 95% bootstrap interval over blocks of BLOCK_ROWS rows
    rows: str = "given"  # which rows: "held-out", "all", "lo:hi", or "given" (batches passed directly)
    method: str | None = None
    l0_level: float | None = None  # latents per token above `level`, the L0 a target counts (smoothed-L0: δ/2)
    level: float | None = None

    def to_dict(self) -> dict:
        """Plain JSON-able dict; `mmcs` omitted when no dictionary was given, `l0_level` when no level applies."""
        d = dataclasses.asdict(self)
        for key in ("mmcs", "l0_level", "level"):
            if d[key] is None:
                del d[key]
        return d


class ReconstructionAccumulator:
    """Running sums from which every metric is exact at the end, whatever the batching."""

    def __init__(self, n_latents: int, d_in: int, eps: float = EPS_L0):
        self.eps = eps
        self.blocks: dict[str, list[np.ndarray]] = {
            k: [] for k in ("err", "sq", "l0", "l0_eps", "cos", "ratio", "has_norm", "rows")
        }
        self.block_sum_x: list[np.ndarray] = []
        self.n = 0
        self.sq_err = 0.0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_sq_x = 0.0
        self.cos = 0.0
        self.l2_ratio = 0.0
        self.hat_sq = 0.0
        self.hat_dot = 0.0
        self.active_total = 0
        self.n_nonzero = 0  # tokens with ‖x‖ > 0: the only ones where cosine and norm ratio mean anything
        self.fires = torch.zeros(n_latents, dtype=torch.long)
        self.fires_eps = torch.zeros(n_latents, dtype=torch.long)
        self.active_counts: dict[int, int] = {}
        self.value_counts = np.zeros(len(VALUE_BINS) - 1, dtype=np.int64)
        self.value_outside = {"below": 0, "above": 0, "negative": 0}

    @torch.no_grad()
    def add(self, x: Tensor, x_hat: Tensor, z: Tensor) -> None:
        """Account for one batch (normalized x, its reconstruction, its code)."""
        x, x_hat = x.double(), x_hat.double()
        # One pass finds the code's non-zeros and every count reads them, not the dense code: at 4,096
        # latents five dense passes were most of `othello score`'s evaluation (bench/README.md).
        z = z.reshape(-1, z.shape[-1])
        rows, cols = torch.nonzero(z, as_tuple=True)
        values = z[rows, cols]
        per_token = torch.bincount(rows, minlength=z.shape[0])
        per_token_eps = torch.bincount(rows[values.abs() > self.eps], minlength=z.shape[0])
        self._add_blocks(x, x_hat, per_token, per_token_eps)
        self.n += x.shape[0]
        self.sq_err += (x - x_hat).pow(2).sum().item()
        self.sum_x += x.sum(dim=0).cpu()  # the sums live on the CPU, batches on the SAE's device
        self.sum_sq_x += x.pow(2).sum().item()
        xn, hn = x.norm(dim=-1), x_hat.norm(dim=-1)
        dot = (x * x_hat).sum(dim=-1)
        has_norm = xn > 0
        self.n_nonzero += int(has_norm.sum())
        self.cos += (dot / (xn * hn).clamp_min(1e-30))[has_norm].sum().item()
        self.l2_ratio += (hn / xn.clamp_min(1e-30))[has_norm].sum().item()
        self.hat_sq += hn.pow(2).sum().item()
        self.hat_dot += dot.sum().item()
        self.active_total += int(per_token.sum())
        self.fires += torch.bincount(cols, minlength=z.shape[1]).cpu()
        self.fires_eps += torch.bincount(cols[values > self.eps], minlength=z.shape[1]).cpu()
        counts = torch.bincount(per_token).cpu()
        for k in counts.nonzero().flatten().tolist():
            self.active_counts[k] = self.active_counts.get(k, 0) + int(counts[k])
        self._add_values(values)

    def _add_values(self, values: Tensor) -> None:
        """Histogram of log10 |z| over the code's non-zero entries; `negative` says how many of them were below zero."""
        values = values.detach().double().cpu().numpy()
        self.value_outside["negative"] += int((values < 0).sum())
        logs = np.log10(np.abs(values))
        self.value_outside["below"] += int((logs < VALUE_BINS[0]).sum())
        self.value_outside["above"] += int((logs > VALUE_BINS[-1]).sum())
        self.value_counts += np.histogram(logs, bins=VALUE_BINS)[0]

    def _add_blocks(self, x: Tensor, x_hat: Tensor, l0: Tensor, l0_eps: Tensor) -> None:
        """Per-block sums of every per-row quantity, for the bootstrap (blocks of BLOCK_ROWS global rows)."""
        xn, hn = x.norm(dim=-1), x_hat.norm(dim=-1)
        has_norm = xn > 0
        per_row = {
            "err": (x - x_hat).pow(2).sum(dim=-1),
            "sq": x.pow(2).sum(dim=-1),
            "l0": l0.double(),
            "l0_eps": l0_eps.double(),
            "cos": torch.where(has_norm, (x * x_hat).sum(dim=-1) / (xn * hn).clamp_min(1e-30), 0.0),
            "ratio": torch.where(has_norm, hn / xn.clamp_min(1e-30), 0.0),
            "has_norm": has_norm.double(),
            "rows": torch.ones_like(xn),
        }
        ids = (self.n + torch.arange(x.shape[0], device=x.device)) // BLOCK_ROWS
        first = int(ids[0])
        local = ids - first
        nb = int(local[-1]) + 1
        for key, v in per_row.items():
            sums = torch.zeros(nb, dtype=torch.float64, device=x.device).index_add_(0, local, v).cpu().numpy()
            self._merge(self.blocks[key], sums, first)
        sx = torch.zeros(nb, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, local, x).cpu().numpy()
        self._merge(self.block_sum_x, sx, first)

    def _merge(self, chunks: list[np.ndarray], sums: np.ndarray, first_block: int) -> None:
        # A batch may start inside the block the previous batch ended in: add into it.
        done = sum(len(c) for c in chunks)
        if done > first_block:
            chunks[-1] = chunks[-1].copy()
            chunks[-1][-1] += sums[0]
            sums = sums[1:]
        if len(sums):
            chunks.append(sums)

    def intervals(self, n_boot: int = N_BOOT, seed: int = 0) -> dict:
        """95% bootstrap intervals (over blocks of contiguous rows) of the per-token metrics."""
        if self.n == 0 or not self.block_sum_x:
            return {}
        parts = {k: np.concatenate(v) for k, v in self.blocks.items()}
        parts["sum_x"] = np.concatenate(self.block_sum_x)
        if len(parts["rows"]) < 2:
            return {}

        def nmse(s):
            var = s["sq"] - (s["sum_x"] ** 2).sum(axis=-1) / s["rows"]
            return s["err"] / np.where(var > 0, var, np.nan)

        stats = {
            "l0": lambda s: s["l0"] / s["rows"],
            "l0_eps": lambda s: s["l0_eps"] / s["rows"],
            "mse": lambda s: s["err"] / s["rows"],
            "nmse": nmse,
            "explained_variance": lambda s: 1.0 - nmse(s),
            "cos_sim": lambda s: s["cos"] / np.maximum(s["has_norm"], 1),
            "l2_ratio": lambda s: s["ratio"] / np.maximum(s["has_norm"], 1),
        }
        out = {}
        for name, stat in stats.items():
            try:
                out[name] = bootstrap_sums(parts, stat, n_boot=n_boot, seed=seed, method="bootstrap-blocks").to_dict()
            except SaelabError:
                out[name] = None  # degenerate data (e.g. zero variance): no interval rather than a wrong one
        return out

    def result(self, normalization: str) -> ReconstructionResult:
        """Final metrics."""
        n = max(self.n, 1)
        mean = self.sum_x / n
        total_var = self.sum_sq_x - n * mean.pow(2).sum().item()
        nmse = self.sq_err / total_var if total_var > 0 else math.nan
        density = self.fires.double() / n
        alive = density[density > 0]
        hist, _ = (
            np.histogram(np.log10(alive.numpy()), bins=DENSITY_BINS)
            if alive.numel()
            else (np.zeros(len(DENSITY_BINS) - 1, int), None)
        )
        return ReconstructionResult(
            l0=self.active_total / n,
            l0_eps=float(sum(c.sum() for c in self.blocks["l0_eps"])) / n,
            eps_l0=self.eps,
            ci=self.intervals(),
            nmse=nmse,
            explained_variance=1.0 - nmse,
            mse=self.sq_err / n,
            cos_sim=self.cos / max(self.n_nonzero, 1),
            l2_ratio=self.l2_ratio / max(self.n_nonzero, 1),
            relative_reconstruction_bias=self.hat_sq / self.hat_dot if self.hat_dot != 0 else math.nan,
            dead_fraction=float((density == 0).double().mean()),
            dead_fraction_eps=float((self.fires_eps == 0).double().mean()),
            dense_fraction=float((density > DENSE_THRESHOLD).double().mean()),
            tokens=self.n,
            normalization=normalization,
            firing_density_hist={
                "log10_bin_edges": DENSITY_BINS.tolist(),
                "counts": hist.tolist(),
                "dead": int((density == 0).sum()),
            },
            active_latents_hist={str(k): v for k, v in sorted(self.active_counts.items())},
            activation_value_hist={
                "log10_bin_edges": VALUE_BINS.tolist(),
                "counts": self.value_counts.tolist(),
                **self.value_outside,
            },
        )


def mmcs(decoder: Tensor, dictionary: Tensor) -> float:
    """Mean over true features of the best cosine similarity with any learned decoder row."""
    if decoder.shape[1] != dictionary.shape[1]:
        raise DataError(f"true dictionary has dimension {dictionary.shape[1]}, the SAE's decoder {decoder.shape[1]}")
    dec = torch.nn.functional.normalize(decoder.detach().double().cpu(), dim=-1)
    true = torch.nn.functional.normalize(dictionary.double(), dim=-1)
    return (true @ dec.T).max(dim=1).values.mean().item()


@torch.no_grad()
def evaluate_batches(
    sae,
    batches: Iterable[Tensor],
    dictionary: Tensor | None = None,
    on_codes: Callable[[Tensor, int], None] | None = None,
    eps_l0: float = EPS_L0,
) -> ReconstructionResult:
    """Evaluate `sae` (in eval mode) on raw batches; metrics are in its normalized space.

    `on_codes(z, first_row)` receives each batch's code, first_row counting from the first batch.
    """
    was_training = sae.training
    sae.eval()
    acc = ReconstructionAccumulator(sae.cfg.n_latents, sae.cfg.d_in, eps=eps_l0)
    level = target_level(sae)
    above = 0
    seen = 0
    try:
        for x_raw in batches:
            sae.check_input(x_raw, "activations")
            x, _ = sae.normalizer.normalize(x_raw)
            z = sae.encode_normalized(x)
            acc.add(x, sae.decode_normalized(z), z)
            if level is not None:
                above += int((z > level).sum())
            if on_codes is not None:
                on_codes(z, seen)
            seen += x_raw.shape[0]
    finally:
        sae.train(was_training)
    result = acc.result(sae.cfg.normalize)
    if level is not None:
        result.l0_level, result.level = above / max(seen, 1), level
    if dictionary is not None:
        result.mmcs = mmcs(sae.W_dec, dictionary)
    return result


def reconstruction_metrics(x: Tensor, x_hat: Tensor, z: Tensor) -> dict:
    """l0, nmse, explained_variance, cos_sim, l2_ratio of one batch (already in a common space)."""
    acc = ReconstructionAccumulator(z.shape[-1], x.shape[-1])
    acc.add(x, x_hat, z)
    r = acc.result("as given")
    return {k: getattr(r, k) for k in ("l0", "nmse", "explained_variance", "cos_sim", "l2_ratio", "mse")}
