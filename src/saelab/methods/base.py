"""The two interfaces every sparsity method implements: Activation and Penalty."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol

from torch import Tensor, nn

from saelab.errors import ConfigError
from saelab.kernels.plan import SparsePlan


@dataclass
class Params:
    """Base for a method's parameters; subclasses add fields and checks."""

    def validate(self, field: str) -> None:
        """Raise ConfigError naming `field.param` when a value is out of range."""

    def to_dict(self) -> dict:
        """Plain-JSON view of the parameters."""
        return dataclasses.asdict(self)


def param(default, help: str):
    """A dataclass field with a default and a help string for `saelab methods`."""
    return dataclasses.field(default=default, metadata={"help": help})


def require(cond: bool, field: str, value, reason: str) -> None:
    """Raise ConfigError(field, value, reason) unless `cond` holds."""
    if not cond:
        raise ConfigError(field, value, reason)


@dataclass(frozen=True)
class SparsityKnob:
    """The parameter that sets how sparse a method's code is, for `target_l0`'s controller.

    `param` names a Params field (or "alpha", the SAE's sparsity coefficient: its penalty's, or that of
    an activation's own sparsity loss, read from LossContext.alpha, as Gated's); raising it lowers L0
    when `more_is_sparser`. The controller moves it in log space within [low, high], starting at
    `initial` when the configured value is not positive, and measures L0 as `measure`: "l0"
    (non-zero entries), "l0_eps" (entries above ε, for codes that leak tiny values everywhere) or
    "l0_level" (entries above the knob owner's `active_level()`, for a penalty that counts a latent
    as on only past a scale of its own: smoothed-L0's δ/2).
    `weights` names the loss term the knob multiplies (e.g. "penalty"); an unset α then starts
    calibrated against the first batch's reconstruction loss (see saelab.training.l0_control).
    """

    param: str
    more_is_sparser: bool = True
    low: float = 1e-8
    high: float = 1e4
    initial: float = 1e-2
    measure: str = "l0"
    weights: str | None = None


@dataclass
class LossContext:
    """What an activation may need to add its own loss terms."""

    sae: nn.Module  # the SparseAutoencoder whose step this is
    x: Tensor  # normalized input [B, d_in]
    pre: Tensor  # encoder pre-activations [B, n]
    z: Tensor  # latent code [B, n]
    x_hat: Tensor  # reconstruction in normalized space [B, d_in]
    alpha: float = 0.0  # the SAE's sparsity coefficient, for activations whose sparsity loss it weights (Gated)


class SAELensFolder(Protocol):
    """A SAELens folder being read, as an Activation's `from_saelens` sees it (saelab.formats.foreign builds it).

    Its accessors raise DataError naming the file and the value, so a method names no path itself.
    """

    cfg: dict  # the folder's config (SAELens 5's flat keys or 6's)
    n_latents: int  # d_sae
    weights: dict[str, Tensor]  # W_enc [d_in, n], b_enc [n], W_dec [n, d_in], b_dec [d_in], float32, shapes checked
    tensor_names: set[str]  # every tensor the weights file holds

    def tensor(self, name: str, shape: tuple[int, ...] | None = None) -> Tensor:
        """The weights file's tensor `name` as float32, of `shape` when given."""
        ...

    def shaped(self, tensor: Tensor, name: str, shape: tuple[int, ...]) -> Tensor:
        """`tensor` (read as `name`) when it has `shape`."""
        ...

    def integer(self, key: str) -> int:
        """cfg[key] as an integer ≥ 1."""
        ...


class Activation(nn.Module):
    """Maps pre-activations [B, n] to a sparse code [B, n]; may carry state and extra losses."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params
    description: ClassVar[str] = ""
    # The parameter a target L0 adapts, for methods whose sparsity comes from a coefficient or threshold.
    sparsity_knob: ClassVar[SparsityKnob | None] = None
    # An activation that needs the bias-free projection (x − b_dec)·W_enc beside `pre` (Gated's magnitude
    # path) sets this; the SAE then calls forward(pre, b_enc) and the projection is pre − b_enc.
    takes_encoder_bias: ClassVar[bool] = False
    # What SAELens calls the SAE's b_enc in this architecture's weights file (Gated: "b_gate").
    saelens_encoder_bias: ClassVar[str] = "b_enc"
    # The architecture SAELens/SAEBench name in a config (`cfg.architecture`); None keeps saelab's name.
    saelens_name: ClassVar[str | None] = None
    # SAELens 5 saved this method as architecture "standard" with this `activation_fn` (its parameters in
    # activation_fn_kwargs); formats.foreign reads such a folder as this method.
    saelens_activation_fn: ClassVar[str | None] = None
    # Inference keeps each pre-activation above one threshold shared by every latent, estimated in training
    # (BatchTopK): `saelab eval --k-sweep` then measures the training rule (batch top-k) beside it.
    has_global_threshold: ClassVar[bool] = False

    def __init__(self, params: Params, n_latents: int):
        super().__init__()
        self.params = params
        self.n_latents = n_latents

    def forward(self, pre: Tensor) -> Tensor:
        """The latent code for `pre`; training-mode behaviour when `self.training` (plus b_enc with takes_encoder_bias)."""
        raise NotImplementedError

    def sparse_plan(self) -> SparsePlan | None:
        """The selection the sparse kernels can compute exactly for the current mode and parameters, or None."""
        return None

    def extra_losses(self, ctx: LossContext) -> dict[str, Tensor]:
        """Loss terms this activation adds to the reconstruction loss (name → scalar)."""
        return {}

    def observe(self, values: Tensor) -> None:
        """Update running statistics from a training batch's non-zero code values (no gradient)."""

    def initialize_from_pre(self, pre: Callable[[], Tensor], target_l0: float | None) -> None:
        """Set data-dependent starting state from the freshly initialized SAE's pre-activations on the init sample (`pre()` computes them)."""

    @property
    def observes_codes(self) -> bool:
        """Whether `observe` does anything (the trainer then gathers the code's non-zero values for it)."""
        # Gathering them is a boolean compaction of the whole [B, n] code on the dense path, about a
        # tenth of a ReLU step at (128, 1024, batch 2048), so methods without statistics skip it.
        return type(self).observe is not Activation.observe

    def export_tensors(self) -> dict[str, Tensor]:
        """Tensors saved beside the weights (e.g. `threshold`), SAELens-named."""
        return {}

    def import_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore what `export_tensors` saved."""

    def saelens_architecture(self) -> tuple[str, dict] | None:
        """(SAELens architecture name, extra cfg keys) if SAELens can run this activation."""
        return None

    # Reading foreign folders: a class marked `@reads_saelens` (methods.registry) is what a SAELens folder of
    # architecture `saelens_name` becomes; one marked `@reads_sparsify` claims sparsify configs by `reads_sparsify_cfg`.

    @classmethod
    def from_saelens(cls, folder: SAELensFolder) -> tuple[dict, dict[str, Tensor]]:
        """(method parameters, tensors for `import_tensors`) of a SAELens folder; may fold a cfg option into folder.weights."""
        return {}, {}

    @classmethod
    def shift_saelens_input(cls, extra: dict[str, Tensor], shift: Tensor) -> dict[str, Tensor]:
        """`extra` for an SAE whose b_enc moves by `shift` (= b_dec·W_enc: SAELens's apply_b_dec_to_input=False)."""
        return extra

    @classmethod
    def reads_sparsify_cfg(cls, cfg: dict) -> bool:
        """Whether an EleutherAI sparsify folder with config `cfg` holds this method (for `@reads_sparsify` classes)."""
        return False

    def set_param(self, name: str, value) -> None:
        """Change one parameter in place (the target-L0 controller's knob); subclasses refresh what depends on it."""
        new_params = dataclasses.replace(self.params, **{name: value})
        new_params.validate("method")
        self.params = new_params

    def with_params(self, **changes) -> "Activation":
        """A copy using changed parameters (e.g. evaluate a TopK at another k)."""
        new_params = dataclasses.replace(self.params, **changes)
        new_params.validate("method")
        clone = type(self)(new_params, self.n_latents)
        clone.load_state_dict(self.state_dict())
        clone.train(self.training)
        return clone


class Penalty(nn.Module):
    """A sparsity loss on the latent code: z [B, n] → scalar (mean over the batch)."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params
    description: ClassVar[str] = ""
    # Every penalty's strength is the SAE's coefficient alpha; starting small approaches the target
    # from the dense side, where no latent has been killed yet.
    sparsity_knob: ClassVar[SparsityKnob] = SparsityKnob(param="alpha", initial=1e-4, weights="penalty")

    def __init__(self, params: Params, n_latents: int):
        super().__init__()
        self.params = params
        self.n_latents = n_latents

    def forward(self, z: Tensor) -> Tensor:
        """The penalty of the batch `z`, averaged over rows."""
        raise NotImplementedError

    # A penalty whose value follows from a ReLU code's positive entries (the zeros' share is known:
    # they all hold 0) sets this and implements on_entries; the sparse kernels then train ReLU with it.
    entrywise: ClassVar[bool] = False

    def on_entries(self, values: Tensor, rows: Tensor, n_rows: int) -> Tensor:
        """forward's value for an [n_rows, n] code whose non-zeros are `values` at rows `rows` (row-major)."""
        raise NotImplementedError(f"penalty {self.name!r} has no entrywise form")


def topk_mask_values(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Values and indices of the k largest entries of each row."""
    if k > x.shape[-1]:
        raise ConfigError("k", k, f"larger than the number of latents {x.shape[-1]}")
    from saelab.kernels.select import row_topk  # here, not at the top: saelab.kernels imports this module

    # The same values as torch.topk (ties may pick other equal-valued columns), by group maxima: at
    # (2048 rows, n 1024, k 32) about half of torch.topk's time on the CPU (bench/dense_step.py).
    n = x.shape[-1]
    values, indices = row_topk(x.reshape(-1, n), k)
    return values.view(*x.shape[:-1], k), indices.view(*x.shape[:-1], k)


def scatter_rows(values: Tensor, indices: Tensor, n: int) -> Tensor:
    """Dense [B, n] tensor holding `values` at `indices` and zero elsewhere."""
    out = values.new_zeros(values.shape[:-1] + (n,))
    return out.scatter(-1, indices, values)
