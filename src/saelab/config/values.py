"""Typed configs for SAEs and training runs, validated at the edge, to and from JSON/TOML."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from saelab.config.fields import _choice, _finite, _from_dict, _nonneg_int, option, require_positive_int
from saelab.devices import DEVICES, DTYPES, check_device, check_dtype
from saelab.errors import ConfigError
from saelab.util.loggers import LOGGERS, check_logger

NORMALIZATIONS = ("none", "unit", "scalar")
B_DEC_INITS = ("geometric_median", "mean", "zero")
ENCODER_INITS = ("decoder_transpose", "random")
DECAYS = ("none", "linear", "cosine")
KERNELS = ("dense", "sparse", "auto")  # auto: sparse where the method has a sparse path


@dataclass
class SAEConfig:
    """One sparse autoencoder: size, sparsity method, recipe options (an SAE's `cfg` adds SAELens's names: model.site.SiteView)."""

    n_latents: int = option(help="number of latents")
    method: str = option("relu", "sparsity method (see `saelab methods`)")
    method_params: dict[str, Any] = option(factory=dict, cli=False)
    penalty: str | None = option(
        None, "sparsity penalty added to the loss (l1, lp, smoothed_l0, freshman, without_topk)"
    )
    penalty_params: dict[str, Any] = option(factory=dict, cli=False)
    alpha: float = option(0.0, "sparsity coefficient: the penalty's, or gated's L1 on its gate")
    penalty_decoder_norm: bool = option(False, "weight the penalty by decoder row norms")
    normalize: str = option("none", "input normalization", choices=NORMALIZATIONS)
    b_dec_init: str = option("geometric_median", "b_dec initialization", choices=B_DEC_INITS)
    encoder_init: str = option("decoder_transpose", "encoder initialization", choices=ENCODER_INITS)
    decoder_unit_norm: bool = option(True, "unit-norm decoder rows with the radial gradient projected out")
    auxk: bool = option(False, "enable the AuxK auxiliary loss on dead latents")
    k_aux: int = option(512, "AuxK: number of dead latents used")
    aux_coef: float = option(1.0 / 32.0, "AuxK coefficient")
    dead_tokens: int = option(10_000_000, "tokens without firing after which a latent counts as dead")
    lr: float | None = option(None, "learning rate (default 2e-4/sqrt(n/2^14))")
    name: str | None = option(None, "name of the SAE")
    kernel: str = option(
        "auto",
        "training kernel: dense (reference), sparse (TopK family incl. Matryoshka; ReLU with no penalty, l1, lp, smoothed_l0 or freshman), auto (sparse where it applies, ReLU only while its code is sparse)",
        choices=KERNELS,
    )
    target_l0: float | None = option(
        None,
        "adapt the sparsity coefficient (penalty or gated α, JumpReLU's l0_coef, dimred's p) to this L0 during a warm phase, then hold it; sets k for the TopK family",
    )
    target_l0_warmup: float = option(0.8, "fraction of training steps during which target_l0 adapts the coefficient")
    # Filled in from the data when training starts.
    d_in: int | None = option(None, cli=False)
    normalization_factor: float | None = option(None, cli=False)

    def validate(self) -> "SAEConfig":
        """Check every plain field; raise ConfigError naming the first bad one (methods.resolve checks the method fields)."""
        require_positive_int("n_latents", self.n_latents)
        if self.target_l0 is not None:
            _finite("target_l0", self.target_l0, minimum=0.0, strict=True)
            _finite("target_l0_warmup", self.target_l0_warmup, minimum=0.0, strict=True)
            if self.target_l0_warmup > 1:
                raise ConfigError("target_l0_warmup", self.target_l0_warmup, "must be ≤ 1")
            if self.target_l0 > self.n_latents:
                raise ConfigError("target_l0", self.target_l0, f"larger than n_latents={self.n_latents}")
        if self.penalty is None and self.penalty_params:
            raise ConfigError("penalty", None, f"parameters {sorted(self.penalty_params)} given without --penalty")
        _finite("alpha", self.alpha, minimum=0.0)
        _choice("normalize", self.normalize, NORMALIZATIONS)
        _choice("b_dec_init", self.b_dec_init, B_DEC_INITS)
        _choice("encoder_init", self.encoder_init, ENCODER_INITS)
        _choice("kernel", self.kernel, KERNELS)
        require_positive_int("k_aux", self.k_aux)
        _finite("aux_coef", self.aux_coef, minimum=0.0)
        require_positive_int("dead_tokens", self.dead_tokens)
        if self.lr is not None:
            _finite("lr", self.lr, minimum=0.0, strict=True)
        if self.d_in is not None:
            require_positive_int("d_in", self.d_in)
        return self

    def default_lr(self) -> float:
        """2e-4 / sqrt(n / 2^14): the scaling paper's 1/sqrt(n) rule anchored at 16k latents."""
        return 2e-4 / math.sqrt(self.n_latents / 2**14)

    @property
    def effective_lr(self) -> float:
        """The configured learning rate, or the default rule."""
        return self.lr if self.lr is not None else self.default_lr()

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SAEConfig":
        """Build from a dict written by `to_dict`; unknown keys are an error."""
        return _from_dict(cls, data, "sae")


@dataclass
class TrainConfig:
    """How to train: data, budget, optimizer, logging and checkpoints."""

    activations: str = option(help="activation file (.npy/.safetensors) or folder of shards")
    out: str = option(help="output folder")
    eval_activations: str | None = option(None, "held-out activations (default: the tail of --activations)")
    eval_fraction: float = option(0.05, "fraction of rows held out for evaluation")
    batch_size: int = option(4096, "rows per batch")
    steps: int | None = option(None, "training steps")
    tokens: int | None = option(None, "training tokens (rounded up to whole batches)")
    epochs: float | None = option(None, "passes over the training rows (default 1 when no budget is given)")
    seed: int = option(0, "random seed")
    device: str = option("cpu", "where to train (batches and SAEs move there)", choices=DEVICES)
    dtype: str = option(
        "float32",
        "compute precision: bfloat16 autocasts the forward pass, weights and saved folders stay float32",
        choices=DTYPES,
    )
    log: str | None = option(
        None,
        "also send the metrics.jsonl records to an experiment logger (pip install 'saelab[log]' for wandb and tensorboard, 'saelab[trackio]' for trackio)",
        choices=LOGGERS,
    )
    betas: tuple[float, float] = option((0.9, 0.999), "Adam betas")
    adam_eps: float = option(1e-8, "Adam epsilon")
    warmup_steps: int = option(0, "linear warm-up steps")
    decay: str = option("none", "learning-rate decay", choices=DECAYS)
    decay_fraction: float = option(0.2, "fraction of steps the decay spans")
    grad_clip: float | None = option(None, "clip the gradient norm to this value")
    lean_memory: bool = option(
        False,
        "less peak memory for large dictionaries: each parameter's Adam step runs as soon as its gradient is complete (never two full gradients at once), no buffers cached between steps, smaller pre-activation chunks (no slowdown measured at 768×65,536 on CPU); one process, no grad_clip",
    )
    shard_latents: bool = option(
        False,
        "split the SAE's latents over the torchrun ranks (dictionaries that do not fit one device): each rank holds n/N latents and reads every whole batch; topk or batchtopk, one SAE",
    )
    latent_shards: int = option(
        0,
        "shard_latents on a grid: ranks per latent group (each holds n/latent_shards latents); the world size / latent_shards groups are data-parallel replicas, each on its slice of every batch (0: one group of all ranks)",
    )
    log_every: int = option(100, "steps between metric log lines")
    checkpoint_every: int = option(0, "steps between checkpoints (0: only at the end)")
    shuffle_buffer_mb: int = option(1024, "memory for the shuffle buffer (MiB)")
    scan: bool = option(True, "scan the data for NaN/inf before training")
    eps_l0: float = option(
        0.01, "l0_eps counts latents above this per token (reported beside l0; target_l0 uses it for leaky codes)"
    )
    until_converged: bool = option(
        False,
        "stop once every SAE's held-out NMSE improves by less than converge_tol (relative) over converge_window tokens; the budget is the cap",
    )
    converge_tol: float = option(
        0.01,
        aliases=("--tol",),
        help="until_converged: relative held-out NMSE improvement below which an SAE has converged",
    )
    converge_window: int = option(
        1_000_000,
        aliases=("--window",),
        help="until_converged: tokens over which the improvement is measured (held-out NMSE is measured 4 times per window)",
    )

    def validate(self) -> "TrainConfig":
        """Check every field; raise ConfigError naming the first bad one."""
        if not self.activations:
            raise ConfigError("activations", self.activations, "a path is required")
        if not self.out:
            raise ConfigError("out", self.out, "an output folder is required")
        _finite("eval_fraction", self.eval_fraction, minimum=0.0)
        if self.eval_fraction >= 1.0:
            raise ConfigError("eval_fraction", self.eval_fraction, "must be < 1")
        require_positive_int("batch_size", self.batch_size)
        budgets = [b for b in ("steps", "tokens", "epochs") if getattr(self, b) is not None]
        if len(budgets) > 1:
            raise ConfigError(
                budgets[1],
                getattr(self, budgets[1]),
                f"give only one of steps / tokens / epochs (also got {budgets[0]})",
            )
        if self.steps is not None:
            require_positive_int("steps", self.steps)
        if self.tokens is not None:
            require_positive_int("tokens", self.tokens)
        if self.epochs is not None:
            _finite("epochs", self.epochs, minimum=0.0, strict=True)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError("betas", self.betas, "must be two numbers in [0, 1)")
        _finite("adam_eps", self.adam_eps, minimum=0.0, strict=True)
        _nonneg_int("warmup_steps", self.warmup_steps)
        _choice("decay", self.decay, DECAYS)
        _finite("decay_fraction", self.decay_fraction, minimum=0.0)
        if self.decay_fraction > 1:
            raise ConfigError("decay_fraction", self.decay_fraction, "must be ≤ 1")
        if self.grad_clip is not None:
            _finite("grad_clip", self.grad_clip, minimum=0.0, strict=True)
        if not isinstance(self.lean_memory, bool):
            raise ConfigError("lean_memory", self.lean_memory, "must be true or false")
        if self.lean_memory and self.grad_clip is not None:
            raise ConfigError(
                "grad_clip",
                self.grad_clip,
                "lean_memory steps each parameter as soon as its gradient is complete; "
                "clipping the global norm needs every gradient at once (drop one of the two)",
            )
        if not isinstance(self.shard_latents, bool):
            raise ConfigError("shard_latents", self.shard_latents, "must be true or false")
        _nonneg_int("latent_shards", self.latent_shards)
        if self.latent_shards and not self.shard_latents:
            raise ConfigError(
                "latent_shards",
                self.latent_shards,
                "sets the latent groups of a latent-sharded run; add shard_latents (--shard-latents)",
            )
        if self.shard_latents and self.lean_memory:
            raise ConfigError(
                "lean_memory",
                True,
                "steps a whole SAE inside its backward; a latent-sharded step all-reduces across ranks first (drop one of the two)",
            )
        if self.shard_latents and self.until_converged:
            raise ConfigError(
                "until_converged",
                True,
                "measures the whole SAE's held-out NMSE between steps; a latent-sharded run has no whole SAE until the end (give a fixed budget)",
            )
        require_positive_int("log_every", self.log_every)
        _nonneg_int("checkpoint_every", self.checkpoint_every)
        require_positive_int("shuffle_buffer_mb", self.shuffle_buffer_mb)
        _nonneg_int("seed", self.seed)
        check_device(self.device)
        check_dtype(self.dtype, self.device)
        if self.log is not None:
            check_logger(self.log)  # unknown, or its package missing: refused before anything trains
        _finite("eps_l0", self.eps_l0, minimum=0.0)
        if not isinstance(self.until_converged, bool):
            raise ConfigError("until_converged", self.until_converged, "must be true or false")
        _finite("converge_tol", self.converge_tol, minimum=0.0, strict=True)
        require_positive_int("converge_window", self.converge_window)
        return self

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Build from a dict; unknown keys are an error."""
        return _from_dict(cls, data, "train")


@dataclass
class RunConfig:
    """A training run: one data stream, one or more SAEs trained on the same batches."""

    train: TrainConfig
    saes: list[SAEConfig]

    def validate(self) -> "RunConfig":
        """Validate the training config and every SAE's plain fields (methods.resolve.resolve_run adds the method checks and names)."""
        self.train.validate()
        if not self.saes:
            raise ConfigError("sae", [], "at least one SAE is required")
        for sae in self.saes:
            sae.validate()
        return self

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return {"train": self.train.to_dict(), "saes": [s.to_dict() for s in self.saes]}

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """Inverse of `to_dict`."""
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("train"), dict)
            or not isinstance(data.get("saes"), list)
        ):
            raise ConfigError(
                "run", type(data).__name__, "must be a table with `train` (a table) and `saes` (a list of tables)"
            )
        for key in set(data) - {"train", "saes"}:
            raise ConfigError(f"run.{key}", data[key], "unknown key")
        return cls(TrainConfig.from_dict(data["train"]), [SAEConfig.from_dict(s) for s in data["saes"]])


# The keys a flat mapping (flags, a TOML table) may give for an SAE beside its method parameters, and for training.
SAE_FIELDS = {f.name for f in dataclasses.fields(SAEConfig)} - {
    "method_params",
    "penalty_params",
    "d_in",
    "normalization_factor",
}
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
