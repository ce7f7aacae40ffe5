"""One SAE in training: its module, optimizer and state (Member), how it is built, and one training step."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from saelab import devices
from saelab.config import SAEConfig, TrainConfig
from saelab.errors import DataError
from saelab.kernels import workspace
from saelab.model.sae import SparseAutoencoder
from saelab.step_output import active_above, active_per_row
from saelab.training.convergence import ConvergenceMonitor
from saelab.training.l0_control import L0Controller
from saelab.training.objective import (
    DeadLatentTracker,
    StepOutput,
    compute_step,
    fired_latents,
    nonzero_values,
)
from saelab.util import distributed

# saelab.json: end-to-end tokens/s, tokens/s inside the steps alone, and the first over the second.
THROUGHPUT_KEYS = ("tokens_per_s", "step_tokens_per_s", "throughput_ratio")


@dataclass
class Member:
    """One SAE being trained, with its optimizer, dead-latent tracker and output folder."""

    cfg: SAEConfig
    sae: SparseAutoencoder
    optimizer: torch.optim.Optimizer
    tracker: DeadLatentTracker
    out: Path
    base_lr: float
    control: L0Controller | None = None  # target_l0's coefficient controller, when the config asks for one
    convergence: ConvergenceMonitor | None = None  # until_converged: its held-out NMSE history
    compute_dtype: str = "float32"  # bfloat16: the forward pass autocasts; weights and Adam state stay float32
    lean: bool = False  # lean_memory: Adam steps each parameter from its post-accumulate hook (step_in_backward)
    stepping: bool = False  # lean: inside train_step's backward, the only time the hooks may step
    init_hash: str = ""  # weights_hash of the SAE as initialized, before any step (recorded in saelab.json)


@dataclass
class Throughput:
    """Tokens/s of one training loop: end to end (its wall time) and inside the steps alone (the bare step loop).

    The wall time runs from asking for the first batch to the end of the last step's bookkeeping:
    waiting for data, moving it to the device, logging, checkpoints and convergence checks, not the
    final evaluation. Tokens are the global batch's (data-parallel: every rank steps through all of
    them together, each measured on its own clock).
    """

    tokens: int
    wall_s: float
    step_s: float
    wait_s: float  # blocked waiting for a batch (and moving it to the device)

    @property
    def tokens_per_s(self) -> float:
        """Tokens per second of wall time."""
        return self.tokens / max(self.wall_s, 1e-9)

    @property
    def step_tokens_per_s(self) -> float:
        """Tokens per second inside the steps alone."""
        return self.tokens / max(self.step_s, 1e-9)

    @property
    def ratio(self) -> float:
        """End-to-end tokens/s as a fraction of the steps' own (1.0: nothing outside the steps costs time)."""
        return self.step_s / max(self.wall_s, 1e-9)

    def record(self) -> dict:
        """The saelab.json keys (THROUGHPUT_KEYS)."""
        values = (round(self.tokens_per_s, 1), round(self.step_tokens_per_s, 1), round(self.ratio, 4))
        return dict(zip(THROUGHPUT_KEYS, values))

    def summary(self) -> str:
        """One line for the end of `saelab train`."""
        return (
            f"throughput: {self.tokens_per_s:,.0f} tokens/s end to end, {self.ratio:.2f}× the bare step loop "
            f"({self.step_tokens_per_s:,.0f} tokens/s in the steps alone)"
        )


def training_flops(cfg: SAEConfig, tokens: int) -> int:
    """Training compute, the dense rule 6 × parameters × tokens with parameters = 2·d_in·n_latents.

    Forward (2 FLOPs per weight per token) plus backward (4) over encoder and decoder weights; the
    sparse TopK path does less decoder work, so this is the dense upper bound, the same for every
    method, which is what a compute axis across sweeps needs.
    """
    return 6 * 2 * int(cfg.d_in) * int(cfg.n_latents) * int(tokens)


def weights_hash(module: torch.nn.Module) -> str:
    """First 16 hex digits of a SHA-256 over every parameter and buffer (names, shapes and float32 bytes)."""
    digest = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        v = t.detach().float().cpu().contiguous()
        digest.update(f"{name}:{tuple(v.shape)}\n".encode())
        digest.update(v.numpy().tobytes())
    return digest.hexdigest()[:16]


def build_member(cfg: SAEConfig, train: TrainConfig, sample: torch.Tensor, init_seed: int, out: Path) -> Member:
    """An SAE initialized from a raw data sample, with its Adam optimizer and dead-latent tracker."""
    sae = SparseAutoencoder(cfg)
    sae.initialize_from_data(sample, torch.Generator().manual_seed(init_seed))
    init_hash = weights_hash(sae)
    sae.to(train.device)  # initialized on the CPU first, so every device starts from the same weights
    sae.train()
    lr = cfg.effective_lr
    # fused: one pass over the 2·n·d_in weights instead of a per-op loop (9× faster on CPU, bench/).
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=tuple(train.betas), eps=train.adam_eps, fused=True)
    m = Member(
        cfg,
        sae,
        opt,
        DeadLatentTracker(cfg.n_latents, cfg.dead_tokens, train.device),
        out,
        lr,
        compute_dtype=train.dtype,
        lean=bool(train.lean_memory),
    )
    m.init_hash = init_hash
    if m.lean:
        step_in_backward(m)
    return m


def step_in_backward(m: Member) -> None:
    """Make each parameter's Adam step run as soon as backward has completed its gradient, then drop that gradient.

    So the step never holds two full gradients (at (768, 65,536): 192 MiB instead of 384). Adam
    steps only parameters that have a gradient, and each hook leaves just its own, so one
    optimizer (its state and checkpoints unchanged) serves every hook. When W_dec's hook runs, every
    node that reads W_dec has finished its backward, so projecting its gradient, stepping and
    renormalizing it in place is safe. Outside train_step (a user's own backward through the trained
    SAE, e.g. an attribution) the hooks do nothing.
    """
    W_dec = m.sae.W_dec

    def hook(p: torch.Tensor) -> None:
        if not m.stepping:
            return
        if p is W_dec and m.cfg.decoder_unit_norm:
            m.sae.project_decoder_grad()
        m.optimizer.step()
        if p is W_dec and m.cfg.decoder_unit_norm:
            m.sae.normalize_decoder()
        p.grad = None

    for p in m.sae.parameters():
        p.register_post_accumulate_grad_hook(hook)


def train_step(m: Member, x: torch.Tensor, lr: float, grad_clip: float | None = None) -> StepOutput:
    """One optimizer step of one SAE on a raw batch: loss, backward, decoder projection, Adam, renorm, bookkeeping."""
    for group in m.optimizer.param_groups:
        group["lr"] = lr
    dead = m.tracker.dead_mask() if m.cfg.auxk else None
    if m.lean:
        out = _lean_step(m, x, dead)
    else:
        with devices.autocast(x.device, m.compute_dtype):  # forward only: backward and Adam run on the float32 weights
            out = compute_step(m.sae, x, m.cfg.alpha, dead)
        _apply_gradients(m, out, grad_clip)
    with torch.no_grad():
        if m.sae.activation.observes_codes:
            m.sae.activation.observe(nonzero_values(out.z).detach())
        # Data-parallel: a latent fired if it fired on any rank, and the global batch's tokens passed.
        m.tracker.update(
            distributed.any_rank(fired_latents(out.z, m.cfg.n_latents)), distributed.global_rows(x.shape[0])
        )
    return out


def _lean_step(m: Member, x: torch.Tensor, dead: torch.Tensor | None) -> StepOutput:
    """lean_memory: forward, drop the forward's scratch, backward (the hooks of step_in_backward step each parameter)."""
    with workspace.lean():
        m.optimizer.zero_grad(set_to_none=True)
        with devices.autocast(x.device, m.compute_dtype):
            out = compute_step(m.sae, x, m.cfg.alpha, dead)
        workspace.release_scratch()
        m.stepping = True
        try:
            out.total.backward()
        finally:
            m.stepping = False
        workspace.release_scratch()
    return out


def _apply_gradients(m: Member, out: StepOutput, grad_clip: float | None) -> None:
    """Backward, then the global-batch gradient, decoder projection, clipping, Adam and renormalization."""
    m.optimizer.zero_grad(set_to_none=True)
    out.total.backward()
    distributed.average_gradients(m.sae.parameters())  # data-parallel: the global batch's gradient from here on
    if m.cfg.decoder_unit_norm:
        m.sae.project_decoder_grad()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(m.sae.parameters(), grad_clip)
    m.optimizer.step()
    if m.cfg.decoder_unit_norm:
        m.sae.normalize_decoder()


# Below this magnitude a value's square underflows float32's smallest normal number: losses and NMSE lose all meaning.
SMALLEST_USABLE = math.sqrt(float(np.finfo(np.float32).tiny))


def check_representable(sample: torch.Tensor, where) -> None:
    """DataError when the data's largest magnitude is so small that float32 squares of it underflow (e.g. ~1e-42)."""
    peak = float(sample.abs().max()) if sample.numel() else 0.0
    if 0.0 < peak < SMALLEST_USABLE:
        raise DataError(
            f"activations={str(where)!r}: the largest magnitude in a sample of {sample.shape[0]} rows is {peak:.3g}, too small "
            f"for float32 training (squares below {SMALLEST_USABLE:.2g} underflow); scale the data up"
        )


def log_record(step: int, tokens: int, result: dict, m: Member, tokens_per_s: float, eps_l0: float) -> dict:
    """One metrics.jsonl line of one SAE: the step's losses, NMSE, L0 (and above ε, and above its level), dead share, lr."""
    out = result["out"]
    with torch.no_grad():
        x, x_hat = out.x, out.x_hat.detach()
        sq = (x - x_hat).pow(2).sum(dim=-1).mean().item()
        var = (x - x.mean(dim=0)).pow(2).sum(dim=-1).mean().item()
    record = {"step": step, "tokens": tokens, "loss": float(out.total.detach())}
    record.update({k: float(v.detach()) for k, v in out.losses.items()})
    record.update(
        {
            "nmse": sq / var if var > 0 else math.nan,
            "l0": float(active_per_row(out.z).double().mean()),
            "l0_eps": float(active_above(out.z, eps_l0).double().mean()),
            "dead_fraction": float((m.tracker.since_fired >= m.cfg.dead_tokens).double().mean()),
            "lr": result["lr"],
            "tokens_per_s": tokens_per_s,
        }
    )
    level = m.control.level if m.control is not None else None
    if level is not None:  # what the target counts, for a knob that measures "l0_level" (smoothed-L0)
        record["l0_level"] = float(active_above(out.z, level).double().mean())
    return record
