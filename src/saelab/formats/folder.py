"""The SAE folder: SAELens cfg.json + sae_weights.safetensors, plus saelab.json (full config, provenance, metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saelab.config import SAEConfig
from saelab.errors import DataError
from saelab.formats.foreign import foreign_format, load_foreign
from saelab.util.atomic import atomic_save_safetensors, atomic_write_json
from saelab.model.site import ModelSite, site_from_source
from saelab.model.sae import SparseAutoencoder
from saelab.version import __version__

WEIGHTS_FILE = "sae_weights.safetensors"
SAELENS_CFG = "cfg.json"
SAELAB_CFG = "saelab.json"
SAELENS_FORMAT_VERSION = "6.54.12"


def saelens_cfg(sae, site: ModelSite | None = None) -> dict:
    """SAELens-readable cfg.json for this SAE (architecture from its activation; the model hook when known)."""
    cfg = sae.cfg
    arch = sae.activation.saelens_architecture()
    architecture, extra = arch if arch is not None else ("saelab", {})
    out = {
        "architecture": architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.n_latents,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        # A scalar factor is folded into the saved weights; `unit` has no SAELens equivalent,
        # so those weights act on unit-normalized inputs (see saelab.json).
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            # The SAELens config format this file follows (SAELens reads configs without it as pre-6.0).
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "saelab_method": cfg.method,
            "saelab_normalize": cfg.normalize,
            "saelab_saelens_compatible": arch is not None and cfg.normalize != "unit",
            # Where SAELens's HookedSAETransformer.add_sae and SAEBench place the SAE (absent: not from a harvested model).
            **({**site.to_dict(), "hook_head_index": None} if site is not None else {}),
        },
    }
    out.update(extra)
    return out


def raw_space_tensors(sae) -> dict[str, torch.Tensor]:
    """Weights acting on raw activations, SAELens-named: a scalar normalization factor s is folded in."""
    s = float(sae.normalizer.factor) if sae.cfg.normalize == "scalar" else 1.0
    tensors = {
        "W_enc": sae.W_enc.detach() * s,
        sae.activation.saelens_encoder_bias: sae.b_enc.detach().clone(),  # Gated's b_gate
        "W_dec": sae.W_dec.detach() / s,
        "b_dec": sae.b_dec.detach() / s,
    }
    tensors.update({k: v.detach() for k, v in sae.activation.export_tensors().items()})
    return {k: v.float().cpu().contiguous() for k, v in tensors.items()}  # float32 on disk whatever the device and dtype trained


def save_sae(sae, folder: str | Path, extra: dict | None = None) -> Path:
    """Write cfg.json, sae_weights.safetensors and saelab.json (full config + `extra`) atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    site = site_from_source((extra or {}).get("source")) or sae.cfg.site
    sae.cfg.site = site
    atomic_save_safetensors(folder / WEIGHTS_FILE, raw_space_tensors(sae))
    atomic_write_json(folder / SAELENS_CFG, saelens_cfg(sae, site))
    record = {"saelab_version": __version__, "sae": sae.cfg.to_dict(), **(extra or {})}
    atomic_write_json(folder / SAELAB_CFG, record)
    return folder


def read_saelab_record(folder: str | Path) -> dict:
    """The saelab.json of an SAE folder (DataError if missing or unreadable)."""
    path = Path(folder) / SAELAB_CFG
    if not Path(folder).is_dir():
        raise DataError(f"sae={str(folder)!r}: not a folder")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"sae={str(folder)!r}: no {SAELAB_CFG} (not a saelab SAE folder)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: unreadable JSON ({e.msg} at line {e.lineno})") from None
    except (ValueError, RecursionError, OSError) as e:  # not UTF-8, nested beyond reason, a folder
        raise DataError(f"{path}: unreadable JSON ({type(e).__name__})") from None


def load_sae(folder: str | Path, device: str = "cpu"):
    """Rebuild a SparseAutoencoder from its folder (saelab's, or one SAELens or sparsify wrote), in eval mode."""
    if Path(folder).is_dir() and not (Path(folder) / SAELAB_CFG).exists() and foreign_format(folder) is not None:
        return load_foreign(folder).to(device)
    record = read_saelab_record(folder)
    try:
        cfg = SAEConfig.from_dict(record["sae"])
    except (KeyError, TypeError) as e:
        raise DataError(f"{Path(folder) / SAELAB_CFG}: bad 'sae' entry ({e})") from None
    try:
        tensors = load_file(str(Path(folder) / WEIGHTS_FILE))
    except (FileNotFoundError, SafetensorError, OSError) as e:
        raise DataError(f"{Path(folder) / WEIGHTS_FILE}: unreadable weights ({e})") from None
    sae = SparseAutoencoder(cfg)
    s = float(sae.normalizer.factor) if cfg.normalize == "scalar" else 1.0
    b_enc = sae.activation.saelens_encoder_bias
    expected = {"W_enc": (cfg.d_in, cfg.n_latents), b_enc: (cfg.n_latents,), "W_dec": (cfg.n_latents, cfg.d_in), "b_dec": (cfg.d_in,)}
    for name, shape in expected.items():
        if name not in tensors:
            raise DataError(f"{Path(folder) / WEIGHTS_FILE}: missing tensor {name!r}")
        if tuple(tensors[name].shape) != shape:
            raise DataError(f"{Path(folder) / WEIGHTS_FILE}: {name} has shape {tuple(tensors[name].shape)}, config says {shape}")
    with torch.no_grad():
        sae.W_enc.copy_(tensors["W_enc"] / s)
        sae.b_enc.copy_(tensors[b_enc])
        sae.W_dec.copy_(tensors["W_dec"] * s)
        sae.b_dec.copy_(tensors["b_dec"] * s)
    sae.activation.import_tensors({k: v for k, v in tensors.items() if k not in expected})
    sae.cfg.site = site_from_source(record.get("source"))
    return sae.to(device).eval()
