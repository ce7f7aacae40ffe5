"""Where an SAE reads its activations, in TransformerLens / SAELens / SAEBench terms (model, hook, layer, context)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable

from saelab.errors import DataError
from saelab.methods import ACTIVATIONS

SITE_FIELD = "model_site"  # the provenance record's key holding ModelSite.to_dict(), written by the source at harvest


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


# Readers of records written before sources recorded SITE_FIELD, by source name. The sources fill
# this (saelab.sources.registry, imported by `import saelab`): only a source knows how its own
# layers map to hooks, and this floor may not import the sources.
_SITE_READERS: dict[str, Callable[[dict], "ModelSite | None"]] = {}


def register_site_reader(name: str, read: Callable[[dict], "ModelSite | None"]) -> None:
    """Let source `name` say the hook of an older record of its own (None for a record it does not own)."""
    _SITE_READERS[name] = read


def site_from_source(source: dict | None) -> ModelSite | None:
    """The ModelSite a provenance record names (its SITE_FIELD, else its source's reader); None for toy or user data."""
    if not isinstance(source, dict):
        return None
    if source.get(SITE_FIELD) is not None:
        site = ModelSite.from_metadata(source[SITE_FIELD])
        if site is None:
            raise DataError(f"source record: {SITE_FIELD}={source[SITE_FIELD]!r} names no hook")
        return site
    for read in _SITE_READERS.values():
        site = read(source)
        if site is not None:
            return site
    return None  # toy or user data, or a record too old or odd to say which hook


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
