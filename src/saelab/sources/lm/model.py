"""Any Hugging Face causal LM as an activation source: loading, block lookup, hooks and splicing."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from saelab.errors import SaelabError

SITES = ("resid_pre", "resid_post", "mlp_out", "attn_out")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Dotted paths of the block list in common architectures, tried before the generic search.
_KNOWN_BLOCK_PATHS = (
    "transformer.h",  # GPT-2, GPT-J, Bloom (as transformer.h)
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.layers",  # Llama, SmolLM, Mistral, Qwen, Gemma
    "model.language_model.layers",  # Gemma 3 and other multimodal wrappers
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")


@dataclass(frozen=True)
class LMSpec:
    """How to load a causal LM: a hub name, a local folder, or a .gguf file path."""

    model: str
    device: str = "cpu"
    dtype: str = "float32"


@dataclass(frozen=True)
class Site:
    """A hook point: one of SITES at block `layer` (0-based)."""

    layer: int
    kind: str

    def __str__(self) -> str:
        return f"{self.kind}@{self.layer}"


class _StopForward(Exception):
    """Raised from a hook to end the forward once the wanted activation is captured."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _looks_like_path(name: str) -> bool:
    # A hub id is "name" or "owner/name"; anything else that names the file system is a path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.path.exists(name)


def _resolve(model: str) -> tuple[str, dict[str, Any]]:
    """Map --model to (from_pretrained id or folder, extra kwargs); local paths must exist."""
    path = os.path.expanduser(model)
    if path.endswith(".gguf"):
        if os.path.isfile(path):
            folder, name = os.path.split(os.path.abspath(path))
            return folder, {"gguf_file": name}
        parts = model.split("/")
        if len(parts) == 3 and not model.startswith((".", "/", "~")):
            # owner/repo/file.gguf: a GGUF file inside a hub repository.
            return "/".join(parts[:2]), {"gguf_file": parts[2]}
        raise SaelabError(f"model={model!r}: no such GGUF file")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise SaelabError(f"model={model!r}: folder has no config.json (not a saved Hugging Face model)")
        return path, {}
    if _looks_like_path(model):
        raise SaelabError(f"model={model!r}: no such model file or folder")
    return model, {}


def load_lm(spec: LMSpec | str) -> "LanguageModel":
    """Load a causal LM and its tokenizer through `from_pretrained` (eval mode, no grad)."""
    if isinstance(spec, str):
        spec = LMSpec(spec)
    from saelab.devices import check_device  # before the slow load: a missing CUDA is one line, not a late traceback

    check_device(spec.device.split(":")[0], "device")
    if spec.dtype not in DTYPES:
        raise SaelabError(f"dtype={spec.dtype!r}: unknown dtype; choose one of {', '.join(DTYPES)}")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SaelabError("transformers is not installed; install saelab[lm]") from exc
    source, extra = _resolve(spec.model)
    if not sys.stderr.isatty():  # a bar redrawn with \r fills a log file or pipe with fragments
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover - older transformers
            pass
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        model = AutoModelForCausalLM.from_pretrained(source, **extra)
    except SaelabError:
        raise
    except Exception as exc:  # OSError, ValueError, hub errors: all mean "cannot load this model"
        raise SaelabError(f"model={spec.model!r}: cannot load ({_first_line(exc)})") from exc
    # Cast after loading: works the same on every transformers version (torch_dtype vs dtype kwarg).
    model = model.to(device=spec.device, dtype=DTYPES[spec.dtype])
    model.eval()
    model.requires_grad_(False)
    return LanguageModel(model, tokenizer, spec)


def load_tokenizer(model: str) -> Any:
    """Only the tokenizer of --model (hub name, folder or .gguf), for reading token ids back as text."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SaelabError("transformers is not installed; install saelab[lm]") from exc
    source, extra = _resolve(model)
    try:
        return AutoTokenizer.from_pretrained(source, **extra)
    except Exception as exc:  # OSError, ValueError, hub errors: all mean "cannot load this tokenizer"
        raise SaelabError(f"model={model!r}: cannot load its tokenizer ({_first_line(exc)})") from exc


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """Return the ModuleList of transformer blocks, by known path or by a generic search."""
    for path in _KNOWN_BLOCK_PATHS:
        mod: Any = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            return mod
    # Generic: the ModuleList with num_hidden_layers children of one class, shallowest first.
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    n_layers = getattr(config, "num_hidden_layers", None)
    candidates = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            if len({type(child) for child in mod}) != 1:
                continue
            if n_layers is not None and len(mod) != n_layers:
                continue
            candidates.append((name.count("."), -len(mod), name, mod))
    if not candidates:
        raise SaelabError(f"model class {type(model).__name__}: cannot find its list of transformer blocks")
    return min(candidates, key=lambda c: c[:3])[3]


def _tensor_of(output: Any) -> torch.Tensor:
    """The hidden-state tensor inside a module output (tensor, tuple or ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find a tensor in module output of type {type(output).__name__}")


def _replace_tensor(output: Any, new: torch.Tensor) -> Any:
    """The module output with its hidden-state tensor replaced by `new`."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new,) + tuple(output[1:])
    if isinstance(output, list):
        return [new] + list(output[1:])
    raise TypeError(f"cannot replace a tensor in module output of type {type(output).__name__}")


class LanguageModel:
    """A loaded causal LM with its tokenizer, block list and site hooks."""

    def __init__(self, model: nn.Module, tokenizer: Any, spec: LMSpec):
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.blocks = find_blocks(model)

    @property
    def name(self) -> str:
        """The model as given on the command line."""
        return self.spec.model

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks."""
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        config = self.model.config
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        return int(config.hidden_size)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    def site(self, layer: int, kind: str) -> Site:
        """Validate (layer, kind) against this model and return the Site."""
        if kind not in SITES:
            raise SaelabError(f"site={kind!r}: unknown site; choose one of {', '.join(SITES)}")
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise SaelabError(
                f"layer={layer!r}: out of range for model {self.name!r} with {self.n_layers} blocks "
                f"(0..{self.n_layers - 1})"
            )
        return Site(layer, kind)

    def _hook_target(self, site: Site) -> tuple[nn.Module, bool]:
        """(module, is_pre_hook) whose output (or input, for a pre-hook) is the site's activation."""
        block = self.blocks[site.layer]
        if site.kind == "resid_pre":
            return block, True
        if site.kind == "resid_post":
            return block, False
        # Gemma 2/3 normalise each sublayer's output before adding it to the residual stream,
        # so there the sublayer's contribution is the output of its post-norm.
        if hasattr(block, "post_feedforward_layernorm"):
            names = ("post_attention_layernorm",) if site.kind == "attn_out" else ("post_feedforward_layernorm",)
        else:
            names = _ATTN_NAMES if site.kind == "attn_out" else _MLP_NAMES
        for name in names:
            mod = getattr(block, name, None)
            if isinstance(mod, nn.Module):
                return mod, False
        raise SaelabError(
            f"site={site.kind!r}: block class {type(block).__name__} has none of the submodules {', '.join(names)}"
        )

    @contextlib.contextmanager
    def _hook(self, site: Site, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
        """Register fn on the site; a returned tensor replaces the activation."""
        module, is_pre = self._hook_target(site)
        if is_pre:

            def pre_hook(_mod, args, kwargs):
                if args:
                    new = fn(args[0])
                    return None if new is None else ((new,) + tuple(args[1:]), kwargs)
                new = fn(kwargs["hidden_states"])
                return None if new is None else (args, {**kwargs, "hidden_states": new})

            handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:

            def hook(_mod, _args, output):
                new = fn(_tensor_of(output))
                return None if new is None else _replace_tensor(output, new)

            handle = module.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Plain forward returning logits [batch, seq, vocab]."""
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=None if attention_mask is None else attention_mask.to(self.device),
            use_cache=False,
        )
        return out.logits

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of a clean forward pass."""
        return self._forward(input_ids, attention_mask)

    @torch.no_grad()
    def activations(
        self,
        input_ids: torch.Tensor,
        site: Site,
        attention_mask: torch.Tensor | None = None,
        stop_early: bool = True,
    ) -> torch.Tensor:
        """Activations [batch, seq, d_model] at `site`, stopping the forward right after it by default."""
        captured: list[torch.Tensor] = []

        def grab(x: torch.Tensor) -> None:
            captured.append(x.detach())
            if stop_early:
                raise _StopForward

        with self._hook(site, grab):
            try:
                self._forward(input_ids, attention_mask)
            except _StopForward:
                pass
        if not captured:
            raise RuntimeError(f"site {site} was never reached in the forward pass")
        return captured[0]

    def activations_at(self, input_ids: torch.Tensor, sites: list[Site]) -> list[torch.Tensor]:
        """Activations [batch, seq, d_model] at every site, in one forward that stops once the last is captured."""
        captured: dict[int, torch.Tensor] = {}

        def grabber(i: int) -> Callable[[torch.Tensor], None]:
            def grab(x: torch.Tensor) -> None:
                captured[i] = x.detach()
                if len(captured) == len(sites):
                    raise _StopForward  # no block past the deepest site runs

            return grab

        with contextlib.ExitStack() as hooks, torch.inference_mode():
            for i, site in enumerate(sites):
                hooks.enter_context(self._hook(site, grabber(i)))
            try:
                self._forward(input_ids)
            except _StopForward:
                pass
        missing = [str(s) for i, s in enumerate(sites) if i not in captured]
        if missing:
            raise RuntimeError(f"sites {', '.join(missing)} were never reached in the forward pass")
        return [captured[i] for i in range(len(sites))]

    @torch.no_grad()
    def run_with_activations(
        self, input_ids: torch.Tensor, site: Site, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A full clean forward returning (logits, activations at site)."""
        captured: list[torch.Tensor] = []
        with self._hook(site, lambda x: captured.append(x.detach())):
            logits = self._forward(input_ids, attention_mask)
        return logits, captured[0]

    @contextlib.contextmanager
    def splice(self, site: Site, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Within the block, the site's activation is replaced by fn(activation) in every forward."""

        def replace(x: torch.Tensor) -> torch.Tensor:
            new = fn(x)
            if new.shape != x.shape:
                raise ValueError(f"splice at {site}: fn returned shape {tuple(new.shape)}, expected {tuple(x.shape)}")
            return new.to(dtype=x.dtype)

        with self._hook(site, replace):
            yield

    @torch.no_grad()
    def spliced_logits(
        self,
        input_ids: torch.Tensor,
        site: Site,
        fn: Callable[[torch.Tensor], torch.Tensor],
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of a forward pass with the site's activation replaced by fn(activation)."""
        with self.splice(site, fn):
            return self._forward(input_ids, attention_mask)

    def tokenizer_name(self) -> str:
        """A short identifier of the tokenizer, for manifests."""
        return f"{type(self.tokenizer).__name__} of {self.spec.model} (vocab {len(self.tokenizer)})"
