"""Train OthelloGPT on random games and measure how often its top-1 move is legal.

Each step draws fresh random games (the generator is far faster than the model), so the
model never sees a game twice and cannot overfit. With ``target="legal"`` the loss is the
cross-entropy against the uniform distribution over the legal next moves: for uniformly
random games that is exactly the expectation of the next-move loss, so it has the same
optimum as plain next-move prediction (``target="next"``) with less gradient noise.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from saelab.sources.othello.games import generate_games, replay_games
from saelab.sources.othello.model import (
    CONTEXT,
    TOKEN_TO_SQUARE,
    OthelloGPT,
    OthelloGPTConfig,
    games_to_tokens,
)
from saelab.util.atomic import dumps_json

LOG_FILE = "train_log.jsonl"
EVAL_SEED = 2_000_000_007  # held-out games; training seeds come from SeedSequence([seed, step])


@dataclass
class TrainConfig:
    """Hyper-parameters of an OthelloGPT training run."""

    model: OthelloGPTConfig = field(default_factory=OthelloGPTConfig)
    steps: int = 6000
    batch_size: int = 128
    lr: float = 2e-3
    min_lr_frac: float = 0.05
    warmup_steps: int = 200
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    schedule: str = "cosine"  # "cosine" or "linear" decay after warm-up
    target: str = "legal"  # "legal" (uniform over legal moves) or "next" (the recorded move)
    seed: int = 0
    threads: int = 1
    time_limit_s: float | None = None  # anneal by this wall-clock budget if it comes first
    eval_every: int = 250
    eval_games: int = 1000
    games_file: str | None = None  # train on a fixed dataset instead of fresh games
    init_from: str | None = None  # continue from this model folder (its architecture wins)
    ema_decay: float | None = None  # if set, evaluate and save an exponential moving average

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first invalid field."""
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"schedule={self.schedule!r}: must be 'cosine' or 'linear'")
        if self.target not in ("legal", "next"):
            raise ValueError(f"target={self.target!r}: must be 'legal' or 'next'")
        for name in ("steps", "batch_size", "threads", "eval_every", "eval_games"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr}: must be > 0")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay}: must lie in (0, 1)")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s={self.time_limit_s}: must be > 0")
        self.model.validate()
        return self


def lr_at(cfg: TrainConfig, progress: float, step: int) -> float:
    """Learning rate after linear warm-up then cosine/linear decay; progress runs 0..1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(max(progress, 0.0), 1.0)
    decay = 0.5 * (1 + math.cos(math.pi * p)) if cfg.schedule == "cosine" else 1 - p
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * decay)


def batch_tensors(games: np.ndarray, want_legal: bool):
    """Return (input tokens [B,59], next tokens [B,59], legal-token mask [B,59,61] or None)."""
    tokens = games_to_tokens(games)
    x, y = tokens[:, :CONTEXT], tokens[:, 1 : CONTEXT + 1]
    if not want_legal:
        return x, y, None
    legal = replay_games(games[:, :CONTEXT], labels=False, legal=True).legal
    mask = np.zeros(legal.shape[:2] + (61,), dtype=bool)
    mask[..., 1:] = legal[..., TOKEN_TO_SQUARE[1:]]
    return x, y, torch.from_numpy(mask)


def loss_fn(logits: torch.Tensor, y: torch.Tensor, legal: torch.Tensor | None) -> torch.Tensor:
    """Mean next-move loss over positions that have a next move."""
    if legal is None:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=0)
    logp = F.log_softmax(logits, dim=-1)
    counts = legal.sum(-1)
    valid = counts > 0
    target = legal.float() / counts.clamp(min=1).unsqueeze(-1)
    per_pos = -(target * logp).sum(-1)
    return per_pos[valid].mean()


@torch.no_grad()
def evaluate_legal(model: OthelloGPT, games: np.ndarray, batch_size: int = 500) -> dict:
    """Return legal_move_accuracy (top-1 over real tokens) overall and per position t=0..58."""
    model.eval()
    legal = replay_games(games[:, :CONTEXT], labels=False, legal=True).legal
    hits = np.zeros(CONTEXT, dtype=np.int64)
    total = np.zeros(CONTEXT, dtype=np.int64)
    for i in range(0, len(games), batch_size):
        g = games[i : i + batch_size]
        logits = model(games_to_tokens(g[:, :CONTEXT]))
        # Padding is never a move, so the prediction is the best of tokens 1..60.
        pred_sq = TOKEN_TO_SQUARE[(logits[..., 1:].argmax(-1) + 1).numpy()]
        leg = legal[i : i + batch_size]
        valid = leg.any(-1)  # a next move exists (the game has not ended at position t)
        ok = np.take_along_axis(leg, pred_sq[..., None], axis=-1)[..., 0] & valid
        hits += ok.sum(0)
        total += valid.sum(0)
    per_pos = np.where(total > 0, hits / np.maximum(total, 1), np.nan)
    return {
        "legal_move_accuracy": float(hits.sum() / max(total.sum(), 1)),
        "n_games": int(len(games)),
        "n_positions": int(total.sum()),
        "per_position": [None if np.isnan(a) else round(float(a), 6) for a in per_pos],
        "positions_per_index": total.tolist(),
    }


def _append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(dumps_json(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def train(cfg: TrainConfig, out_dir: str | os.PathLike, log=print) -> OthelloGPT:
    """Train a model per `cfg`, checkpointing into `out_dir` (weights, config, JSONL log)."""
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_FILE
    dataset = np.load(cfg.games_file, allow_pickle=False) if cfg.games_file else None
    if cfg.init_from:
        # Loaded before the log is reset, so init_from may be out_dir itself.
        model = OthelloGPT.load(cfg.init_from)
        cfg.model = model.cfg
    else:
        model = OthelloGPT(cfg.model)
    if log_path.exists():
        # A continued run keeps the earlier log as its history; a fresh run starts a new one.
        if not cfg.init_from:
            log_path.unlink()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    # Averaging weights over the last updates smooths out SGD noise at no extra compute.
    ema = copy.deepcopy(model) if cfg.ema_decay is not None else None
    keep = ema if ema is not None else model
    eval_games = generate_games(cfg.eval_games, EVAL_SEED)
    _append_jsonl(log_path, {"event": "config", "n_params": n_params, **asdict(cfg)})
    t0 = time.time()
    data_rng = np.random.default_rng(cfg.seed)
    step = 0
    for step in range(cfg.steps):
        elapsed = time.time() - t0
        if cfg.time_limit_s is not None and elapsed >= cfg.time_limit_s:
            break
        # Anneal against whichever budget (steps or wall clock) will run out first.
        progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        if cfg.time_limit_s is not None:
            progress = max(progress, elapsed / cfg.time_limit_s)
        lr = lr_at(cfg, progress, step)
        for g in opt.param_groups:
            g["lr"] = lr
        if dataset is None:
            seed = int(np.random.SeedSequence([cfg.seed, step]).generate_state(1)[0])
            games = generate_games(cfg.batch_size, seed)
        else:
            games = dataset[data_rng.integers(0, len(dataset), cfg.batch_size)]
        x, y, legal = batch_tensors(games, cfg.target == "legal")
        model.train()
        loss = loss_fn(model(x), y, legal)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(p, 1 - cfg.ema_decay)
        if step % 25 == 0:
            row = {
                "event": "train",
                "step": step,
                "elapsed_s": round(time.time() - t0, 2),
                "lr": lr,
                "loss": round(loss.item(), 5),
                "grad_norm": round(gnorm.item(), 4),
                "games_seen": (step + 1) * cfg.batch_size,
            }
            _append_jsonl(log_path, row)
        if (step + 1) % cfg.eval_every == 0:
            _checkpoint(keep, eval_games, out, log_path, step + 1, t0, log)
    _checkpoint(keep, eval_games, out, log_path, step + 1, t0, log, final=True)
    return keep


def _checkpoint(model, eval_games, out, log_path, step, t0, log, final=False) -> None:
    ev = evaluate_legal(model, eval_games)
    model.save(out)  # atomic: an interrupted run leaves the previous checkpoint intact
    row = {
        "event": "final" if final else "eval",
        "step": step,
        "elapsed_s": round(time.time() - t0, 2),
        "legal_move_accuracy": round(ev["legal_move_accuracy"], 6),
        "eval_games": ev["n_games"],
    }
    _append_jsonl(log_path, row)
    log(dumps_json(row))
