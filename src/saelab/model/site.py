"""Where an SAE reads its activations, in TransformerLens / SAELens / SAEBench terms (model, hook, layer, context)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from saelab.errors import DataError
from saelab.methods import ACTIVATIONS

# saelab's LM sites (saelab.sources.lm.model.SITES) → the TransformerLens hook of block L.
TL_HOOKS = {
    "resid_pre": "hook_resid_pre",
    "resid_post": "hook_resid_post",
    "mlp_out": "hook_mlp_out",
    "attn_out": "hook_attn_out",
}
OTHELLO_MODEL = "saelab-othellogpt"  # the committed model (saelab.sources.othello.harvest.load_model("default"))
OTHELLO_CONTEXT = 59  # saelab.sources.othello.model.CONTEXT, not imported: this leaf must not pull in the testbed


@dataclass(frozen=True)
class ModelSite:
    """The hook point an SAE belongs to: enough for SAELens `add_sae` and SAEBench to place it."""

    model_name: str
    hook_name: str  # TransformerLens name, e.g. blocks.3.hook_resid_post
    hook_layer: int
    context_size: int
    prepend_bos: bool

    def to_dict(self) -> dict:
        """Plain JSON-able dict (the keys SAELens's cfg.json metadata uses)."""
        return asdict(self)

    @classmethod
    def from_metadata(cls, meta: dict) -> ModelSite | None:
        """From a SAELens cfg.json `metadata` (or a flat SAELens 5 cfg); None when it names no hook."""
        if not isinstance(meta, dict) or not meta.get("hook_name"):
            return None
        if not isinstance(meta["hook_name"], str):
            raise DataError(f"cfg.json metadata: hook_name={meta['hook_name']!r} must be a string")
        try:
            return cls(
                str(meta.get("model_name") or ""),
                str(meta["hook_name"]),
                int(meta.get("hook_layer", _layer_of(meta["hook_name"]))),
                int(meta.get("context_size") or 0),
                bool(meta.get("prepend_bos", True)),
            )
        except (TypeError, ValueError) as e:
            raise DataError(f"cfg.json metadata: unreadable hook fields ({e})") from None


def _layer_of(hook_name: str) -> int:
    """L from `blocks.L.…` (SAELens 6 dropped hook_layer from the config; -1 when the name has none)."""
    parts = hook_name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else -1


def site_from_source(source: dict | None) -> ModelSite | None:
    """The ModelSite of activations from `saelab lm activations` or `saelab othello activations`; None for any other data."""
    if (
        not isinstance(source, dict)
        or isinstance(source.get("layer"), bool)
        or not isinstance(source.get("layer"), int)
    ):
        return None  # toy or user data, or a record too old or odd to say which hook
    if source.get("source") == "othello":
        # Layer 0 is the embeddings (block 0's input); layer i ≥ 1 is block i−1's output.
        layer = source["layer"]
        hook = "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"
        model = source.get("model", "default")
        # No BOS: the model's tokens are moves only, position 0 is the first move.
        return ModelSite(
            OTHELLO_MODEL if model == "default" else str(model), hook, max(layer - 1, 0), OTHELLO_CONTEXT, False
        )
    if source.get("site") in TL_HOOKS and isinstance(source.get("model"), str):
        layer = source["layer"]
        options = source.get("options") if isinstance(source.get("options"), dict) else {}
        context = source.get("context") if isinstance(source.get("context"), int) else 0
        return ModelSite(
            source["model"],
            f"blocks.{layer}.{TL_HOOKS[source['site']]}",
            layer,
            context,
            bool(options.get("prepend_bos", True)),
        )
    return None


class SiteView:
    """An SAE's config as SAELens and SAEBench read it: every SAEConfig field, plus their names.

    `sae.cfg` is this view over the plain SAEConfig (`.config`): reads and writes of config fields
    pass through; SAEBench also reads `d_sae, architecture, hook_name, hook_layer, model_name,
    context_size, prepend_bos, dtype, device`. The hook fields come from `site` (None when the
    activations did not come from a model saelab harvested: toy or user data), so they read as
    None, never as a made-up hook. `dtype`/`device` follow the module holding the config.
    """

    def __init__(self, config, site: ModelSite | None = None):
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_site", site)
        object.__setattr__(self, "_placement", ("float32", "cpu"))

    def __getattr__(self, name: str):
        if name.startswith("_"):  # never reached for the view's own state once built (copy/pickle probe these)
            raise AttributeError(name)
        return getattr(self._config, name)

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("_") or isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)  # the view's own state and SAELens names (their setters)
        else:
            setattr(self._config, name, value)

    def __repr__(self) -> str:
        return f"SiteView({self._config!r}, site={self._site!r})"

    @property
    def config(self):
        """The plain SAEConfig under this view."""
        return self._config

    @property
    def site(self) -> ModelSite | None:
        """The model hook the SAE belongs to, or None."""
        return self._site

    @site.setter
    def site(self, value: ModelSite | None) -> None:
        self._site = value

    @property
    def d_sae(self) -> int:
        """SAELens's name for n_latents."""
        return self.n_latents

    @property
    def architecture(self) -> str:
        """SAELens's architecture name for the method (saelab's name where SAELens has none)."""
        cls = ACTIVATIONS.get(self.method)
        return (cls.saelens_name if cls is not None else None) or self.method

    @property
    def model_name(self) -> str | None:
        """The model whose activations the SAE reads."""
        return self._site.model_name if self._site else None

    @model_name.setter
    def model_name(self, value) -> None:
        self._set_site_field("model_name", value)

    @property
    def hook_name(self) -> str | None:
        """TransformerLens hook name of the site."""
        return self._site.hook_name if self._site else None

    @hook_name.setter
    def hook_name(self, value) -> None:
        self._set_site_field("hook_name", value)

    @property
    def hook_layer(self) -> int | None:
        """Block index of the hook."""
        return self._site.hook_layer if self._site else None

    @hook_layer.setter
    def hook_layer(self, value) -> None:
        self._set_site_field("hook_layer", value)

    @property
    def context_size(self) -> int | None:
        """Tokens per context the activations were harvested with."""
        return self._site.context_size if self._site else None

    @context_size.setter
    def context_size(self, value) -> None:
        self._set_site_field("context_size", value)

    @property
    def prepend_bos(self) -> bool | None:
        """Whether each context began with the BOS token."""
        return self._site.prepend_bos if self._site else None

    @prepend_bos.setter
    def prepend_bos(self, value) -> None:
        self._set_site_field("prepend_bos", value)

    def _set_site_field(self, name: str, value) -> None:
        """SAEBench's load_and_format_sae writes back every hook field it read (cfg.hook_layer = …):
        an equal value changes nothing; a new one moves the site; a value on an SAE without a site is refused."""
        if value == getattr(self, name):
            return
        if self._site is None:
            raise AttributeError(
                f"cfg.{name}: this SAE has no model site (toy or user data); set cfg.site = ModelSite(...) instead"
            )
        self._site = replace(self._site, **{name: value})

    @property
    def hook_head_index(self) -> None:
        """Always None: saelab SAEs read whole hooks, not one attention head."""
        return None

    @hook_head_index.setter
    def hook_head_index(self, value) -> None:
        if value is not None:
            raise AttributeError("cfg.hook_head_index: saelab SAEs read whole hooks; only None is accepted")

    @property
    def normalize_activations(self) -> str:
        """Always "none" (SAELens's ActivationsStore.from_sae reads it): saelab's encode normalizes by itself."""
        return "none"

    @property
    def apply_b_dec_to_input(self) -> bool:
        """Always True: saelab subtracts b_dec before encoding."""
        return True

    @property
    def dtype(self) -> str:
        """dtype of the module's weights, as SAELens writes it ("float32")."""
        return self._placement[0]

    @dtype.setter
    def dtype(self, value) -> None:
        self._placement = (str(value).removeprefix("torch."), self._placement[1])

    @property
    def device(self) -> str:
        """Device of the module's weights ("cpu", "cuda:0")."""
        return self._placement[1]

    @device.setter
    def device(self, value) -> None:
        self._placement = (self._placement[0], str(value))
