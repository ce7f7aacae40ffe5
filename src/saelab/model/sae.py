"""The sparse autoencoder: SAELens-named weights, input normalization, a pluggable sparsity method."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from saelab.config import SAEConfig
from saelab.errors import ConfigError, DataError
from saelab.kernels.native import ops as native
from saelab.methods.base import Activation, Penalty
from saelab.methods.resolve import resolve, resolve_sae
from saelab.model.initialization import initial_b_dec, unit_rows
from saelab.model.normalize import Normalizer
from saelab.model.site import SiteView

INIT_PRE_ROWS = 4096  # init-sample rows whose pre-activations data-dependent activation state is set from


def centered_linear(x_n: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, spread=None) -> Tensor:
    """(x_n − b_dec)·W_enc + b_enc, with b_dec's gradient formed by one vector product.

    `spread` wraps each tensor that enters the product and whose gradient must be summed over ranks
    (latent shards: `latent_sharding.copy_to_shards`); None in one process.
    """
    spread = spread if spread is not None else (lambda t: t)
    if not (b_dec.requires_grad and torch.is_grad_enabled()):
        return spread(x_n - b_dec) @ W_enc + b_enc
    # Autograd through (x_n − b_dec)·W_enc would form ∂L/∂(x_n − b_dec) = ∂L/∂pre·W_encᵀ, a [B, n]·[n, d]
    # product (a sixth of a dense ReLU step's products), only to sum its rows into b_dec's gradient.
    # Routed through `zero` it is −W_enc·Σ_rows ∂L/∂pre, one [n]·[n, d] product (and across latent
    # shards a [d] sum instead of [B, d]). The forward is unchanged bit for bit: b_dec − b_dec.detach()
    # is exactly 0, as is its product, and W_enc's gradient gains exactly 0 from it.
    zero = spread(b_dec - b_dec.detach()) @ W_enc
    return spread(x_n - b_dec.detach()) @ W_enc + (b_enc - zero)


class SparseAutoencoder(nn.Module):
    """z = act((x_n − b_dec) W_enc + b_enc), x̂_n = z W_dec + b_dec, with x_n the normalized input.

    Shapes follow SAELens: W_enc [d_in, n], b_enc [n], W_dec [n, d_in], b_dec [d_in].
    `encode`/`forward` take raw activations; `forward` returns them in raw space too, and so does
    `decode`, so that decode(encode(x)) == forward(x) (SAEBench checks it). Undoing `unit`
    normalization needs each token's own mean and norm: `decode` takes them from the latest
    `encode` when the codes have that call's leading shape (codes of those tokens, edited or not),
    and otherwise returns the normalized space with a warning.
    """

    def __init__(self, cfg: SAEConfig | SiteView):
        super().__init__()
        site = cfg.site if isinstance(cfg, SiteView) else None
        cfg = cfg.config if isinstance(cfg, SiteView) else cfg
        cfg = resolve_sae(cfg)  # a new config where target_l0 sets k; the caller's is not changed
        if cfg.d_in is None:
            raise ConfigError("d_in", None, "unknown; it is read from the activations")
        self.cfg = SiteView(cfg, site)
        d, n = cfg.d_in, cfg.n_latents
        self.W_enc = nn.Parameter(torch.empty(d, n))
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(torch.empty(n, d))
        self.b_dec = nn.Parameter(torch.zeros(d))
        parts = resolve(cfg)
        act_cls, act_params = parts.activation
        self.activation: Activation = act_cls(act_params, n)
        self.penalty: Penalty | None = None
        penalty = parts.penalty
        if penalty is not None:
            pen_cls, pen_params = penalty
            self.penalty = pen_cls(pen_params, n)
        self.normalizer = Normalizer(cfg.normalize, cfg.normalization_factor)
        self.reset_weights(torch.Generator().manual_seed(0))

    # ---- initialization -------------------------------------------------------------------
    @torch.no_grad()
    def reset_weights(self, generator: torch.Generator, sample: Tensor | None = None) -> None:
        """Unit-norm decoder rows, W_enc = W_dec.T (or independent), b_dec from a normalized sample."""
        d, n = self.cfg.d_in, self.cfg.n_latents
        self.W_dec.copy_(unit_rows(n, d, generator))
        if self.cfg.encoder_init == "decoder_transpose":
            self.W_enc.copy_(self.W_dec.T)
        else:
            self.W_enc.copy_(unit_rows(n, d, generator).T)
        self.b_enc.zero_()
        self.b_dec.copy_(initial_b_dec(self.cfg.b_dec_init, sample, d))

    @torch.no_grad()
    def initialize_from_data(self, sample: Tensor, generator: torch.Generator) -> None:
        """Fit the normalizer on a raw sample, then initialize weights (b_dec from that sample)."""
        self.check_input(sample, "activations")
        factor = self.normalizer.fit(sample)
        if factor is not None:
            self.cfg.normalization_factor = factor
        x_n, _ = self.normalizer.normalize(sample)
        self.reset_weights(generator, x_n)
        # Lazy: only an activation that sets state from data computes the [rows, n] product (1 GiB at 65,536 latents).
        self.activation.initialize_from_pre(lambda: self.pre_activations(x_n[:INIT_PRE_ROWS]), self.cfg.target_l0)

    # ---- the map --------------------------------------------------------------------------
    def check_input(self, x: Tensor, what: str = "x") -> None:
        """Raise DataError when the last dimension is not d_in."""
        if x.shape[-1] != self.cfg.d_in:
            raise DataError(f"{what}: last dimension is {x.shape[-1]}, the SAE expects d_in={self.cfg.d_in}")

    def pre_activations(self, x_n: Tensor) -> Tensor:
        """(x_n − b_dec) W_enc + b_enc."""
        return centered_linear(x_n, self.W_enc, self.b_enc, self.b_dec)

    def activate(self, pre: Tensor) -> Tensor:
        """The activation applied to pre-activations (handed b_enc too when it reads the bias-free projection)."""
        if self.activation.takes_encoder_bias:
            return self.activation(pre, self.b_enc)
        return self.activation(pre)

    def encode_normalized(self, x_n: Tensor) -> Tensor:
        """Latent code of an already-normalized input."""
        return self.activate(self.pre_activations(x_n))

    def decode_normalized(self, z: Tensor) -> Tensor:
        """Reconstruction in the normalized space."""
        return z @ self.W_dec + self.b_dec

    def encode(self, x: Tensor) -> Tensor:
        """Latent code of raw activations x [..., d_in]."""
        self.check_input(x)
        x_n, ctx = self.normalizer.normalize(x)
        if ctx is not None:  # `unit`: kept so that decode can return these tokens to raw space
            self._unit_context = (ctx[0].detach(), ctx[1].detach())
        return self.encode_normalized(x_n)

    def decode(self, z: Tensor) -> Tensor:
        """Raw-space reconstruction from a code (see the class docstring for `unit` normalization)."""
        ctx = None
        if self.normalizer.mode == "unit":
            ctx = getattr(self, "_unit_context", None)
            if ctx is None or ctx[0].shape[:-1] != z.shape[:-1] or ctx[0].device != z.device:
                warnings.warn(
                    "decode: with unit normalization the codes are not of the tokens last encoded, so the "
                    "reconstruction stays in the normalized space (use forward/reconstruct for raw space)",
                    stacklevel=2,
                )
                ctx = None
        return self.normalizer.denormalize(self.decode_normalized(z), ctx)

    @property
    def device(self) -> torch.device:
        """Device of the weights (SAEBench reads it)."""
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the weights (SAEBench reads it)."""
        return self.W_enc.dtype

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda()/.half() all pass here: keep the SAELens-style cfg.dtype/cfg.device in step.
        out = super()._apply(fn, *args, **kwargs)
        self.cfg.dtype, self.cfg.device = self.dtype, self.device
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Raw activations → raw reconstruction."""
        return self.reconstruct(x)[0]

    def reconstruct(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(raw-space reconstruction, latent code) of raw activations in one pass."""
        self.check_input(x)
        x_n, ctx = self.normalizer.normalize(x)
        z = self.encode_normalized(x_n)
        return self.normalizer.denormalize(self.decode_normalized(z), ctx), z

    # ---- the unit-norm decoder constraint ---------------------------------------------------
    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove from each decoder row's gradient its component along that row."""
        if self.W_dec.grad is None:
            return
        g, w = self.W_dec.grad, self.W_dec
        if _native_rows(w, g):
            # One visit per row: 11.9 → 4.6 ms at 16,384 × 768 (bench/row_kernels.py, unit-project).
            native.project_rows(w.detach(), g)
            return
        # g −= (g·w / ‖w‖²) w, row by row, without [n, d_in] temporaries (they dominate at large n).
        sq = torch.linalg.vector_norm(w, dim=-1).clamp_min(1e-12).square_()
        coef = torch.bmm(g.unsqueeze(1), w.unsqueeze(2)).view(-1).div_(sq)
        g.addcmul_(w, coef.unsqueeze(1), value=-1.0)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale each decoder row to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    def decoder_norms(self) -> Tensor:
        """‖W_dec[i]‖ for every latent."""
        return self.W_dec.norm(dim=-1)

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"d_in={c.d_in}, n_latents={c.n_latents}, method={c.method}, penalty={c.penalty}, normalize={c.normalize}"
        )


def _native_rows(*tensors: Tensor) -> bool:
    """Whether the native row pass can take these decoder tensors (contiguous float32 on a CPU where it loads)."""
    return all(t.dtype == torch.float32 and t.is_contiguous() for t in tensors) and native.usable(*tensors)
