"""Linear probes for the board state (empty / mine / theirs) at every residual-stream layer.

For each layer, one multinomial logistic regression per square is trained, all 64 squares at
once as a single [d_model, 64 * 3] linear map, on the positions of training games; each
(square, state) pair is then scored by the AUROC of the probe's probability for that state on
held-out games. A pair is "findable" at a layer when that AUROC is >= 0.9.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from saelab.sources.othello.auroc import GOOD_AUROC, auroc_columns, pair_indicators
from saelab.sources.othello.harvest import residuals_by_layer
from saelab.sources.othello.model import ASSETS_DIR, CONTEXT, OthelloGPT

STATE_NAMES = ("empty", "mine", "theirs")
PROBES_FILE = "probes.json"  # per-layer AUROC and findable masks of the committed model


@dataclass
class ProbeConfig:
    """How probes are fitted; positions index the model's context (0..58)."""

    train_frac: float = 0.8
    epochs: int = 4
    batch_size: int = 2048
    lr: float = 1e-2
    weight_decay: float = 1e-4
    first_position: int = 0
    last_position: int = CONTEXT - 1  # inclusive
    seed: int = 0


@dataclass
class ProbeResult:
    """Per-layer probe quality: auroc[layer] and findable[layer] are [64, 3] arrays."""

    layers: list[int]
    auroc: dict[int, np.ndarray] = field(default_factory=dict)
    findable: dict[int, np.ndarray] = field(default_factory=dict)
    accuracy: dict[int, float] = field(default_factory=dict)
    n_train: int = 0
    n_test: int = 0

    def best_layer(self) -> int:
        """Return the layer with the most findable pairs (ties: the earlier layer)."""
        return max(self.layers, key=lambda l: (int(self.findable[l].sum()), -l))

    def table(self) -> list[dict]:
        """Return one row per layer: findable pairs, mean AUROC and per-square accuracy."""
        rows = []
        for l in self.layers:
            auc = self.auroc[l]
            rows.append(
                {
                    "layer": l,
                    "findable": int(self.findable[l].sum()),
                    "findable_by_state": {s: int(self.findable[l][:, i].sum()) for i, s in enumerate(STATE_NAMES)},
                    "defined_pairs": int(np.isfinite(auc).sum()),
                    "mean_auroc": round(float(np.nanmean(auc)), 4),
                    "accuracy": round(self.accuracy[l], 4),
                }
            )
        return rows

    def to_dict(self) -> dict:
        """Return a JSON-ready dict; undefined AUROCs (pairs that never vary) become null."""
        return {
            "layers": self.layers,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "table": self.table(),
            "best_layer": self.best_layer(),
            "auroc": {
                str(l): [[None if np.isnan(v) else round(float(v), 5) for v in row] for row in a]
                for l, a in self.auroc.items()
            },
            "findable": {str(l): f.astype(int).tolist() for l, f in self.findable.items()},
            "accuracy": {str(l): a for l, a in self.accuracy.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeResult":
        """Rebuild a result written by `to_dict`."""
        return cls(
            layers=[int(l) for l in d["layers"]],
            auroc={int(l): np.array(a, dtype=float) for l, a in d["auroc"].items()},
            findable={int(l): np.array(f, dtype=bool) for l, f in d["findable"].items()},
            accuracy={int(l): float(a) for l, a in d["accuracy"].items()},
            n_train=int(d["n_train"]),
            n_test=int(d["n_test"]),
        )

    def markdown(self) -> str:
        """Return the per-layer table as Markdown."""
        lines = [
            "| layer | findable pairs | empty | mine | theirs | mean AUROC | square accuracy |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in self.table():
            b = r["findable_by_state"]
            lines.append(
                f"| {r['layer']} | {r['findable']}/{r['defined_pairs']} | {b['empty']} | {b['mine']} "
                f"| {b['theirs']} | {r['mean_auroc']:.4f} | {r['accuracy']:.4f} |"
            )
        return "\n".join(lines)


def load_probe_report(path: str | Path | None = None) -> ProbeResult:
    """Load the committed model's probe result (assets/probes.json) or another saved one."""
    p = Path(path) if path is not None else ASSETS_DIR / PROBES_FILE
    return ProbeResult.from_dict(json.loads(p.read_text()))


def fit_probe(x: torch.Tensor, labels: np.ndarray, cfg: ProbeConfig) -> torch.nn.Linear:
    """Fit a [d_model -> 64*3] linear probe by minibatch AdamW on per-square cross-entropy."""
    g = torch.Generator().manual_seed(cfg.seed)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    probe = torch.nn.Linear(x.shape[1], 64 * 3)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * max(1, -(-len(x) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=g)
        for j in range(0, len(x), cfg.batch_size):
            idx = perm[j : j + cfg.batch_size]
            logits = probe(x[idx]).view(-1, 64, 3)
            loss = F.cross_entropy(logits.reshape(-1, 3), y[idx].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return probe


def train_probes(
    model: OthelloGPT, games: np.ndarray, layers: list[int] | None = None, cfg: ProbeConfig | None = None
) -> ProbeResult:
    """Fit a probe per layer on a split of `games` and score AUROC [64, 3] on the held-out games."""
    cfg = cfg or ProbeConfig()
    layers = list(range(model.cfg.n_layer + 1)) if layers is None else list(layers)
    n_train = int(round(len(games) * cfg.train_frac))
    if not 0 < n_train < len(games):
        raise ValueError(f"train_frac={cfg.train_frac}: leaves no train or test games of {len(games)}")
    lo, hi = cfg.first_position, cfg.last_position + 1
    tr_x, tr_y, _ = residuals_by_layer(model, games[:n_train], layers, lo, hi)
    te_x, te_y, _ = residuals_by_layer(model, games[n_train:], layers, lo, hi)
    result = ProbeResult(layers=layers, n_train=len(tr_y), n_test=len(te_y))
    target = pair_indicators(te_y)
    for l in layers:
        # Standardise with train statistics so one learning rate suits every layer's scale.
        mu, sd = tr_x[l].mean(0), tr_x[l].std(0).clamp(min=1e-6)
        with torch.enable_grad():
            probe = fit_probe((tr_x[l] - mu) / sd, tr_y, cfg)
        with torch.no_grad():
            probs = probe((te_x[l] - mu) / sd).view(-1, 64, 3).softmax(-1)
        auc = auroc_columns(probs.reshape(-1, 192), target).numpy().reshape(64, 3)
        result.auroc[l] = auc
        result.findable[l] = np.nan_to_num(auc, nan=0.0) >= GOOD_AUROC
        result.accuracy[l] = float((probs.argmax(-1).numpy() == te_y).mean())
    return result
