"""The SAE folder: SAELens cfg.json + sae_weights.safetensors, plus saelab.json (full config, provenance, metrics).

saelab.json is written last and names the size and SHA-256 of the two files before it, so a folder
is complete or recognisably partial: one killed before its saelab.json (cfg.json says saelab wrote
it) or holding weights another run wrote is refused, never read as something else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saelab.config import SAEConfig
from saelab.errors import DataError
from saelab.formats.foreign import foreign_format, load_foreign
from saelab.model.sae import SparseAutoencoder
from saelab.model.site import ModelSite, site_from_source
from saelab.util.atomic import atomic_save_safetensors, atomic_write_json
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
    return {
        k: v.float().cpu().contiguous() for k, v in tensors.items()
    }  # float32 on disk whatever the device and dtype trained


def save_sae(sae, folder: str | Path, extra: dict | None = None) -> Path:
    """Write cfg.json, sae_weights.safetensors and saelab.json (full config + `extra`) atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    site = site_from_source((extra or {}).get("source")) or sae.cfg.site
    sae.cfg.site = site
    atomic_save_safetensors(folder / WEIGHTS_FILE, raw_space_tensors(sae))
    atomic_write_json(folder / SAELENS_CFG, saelens_cfg(sae, site))
    record = {
        "saelab_version": __version__,
        "sae": sae.cfg.to_dict(),
        **(extra or {}),
        FILES_KEY: {name: _file_id(folder / name) for name in (WEIGHTS_FILE, SAELENS_CFG)},
    }
    atomic_write_json(folder / SAELAB_CFG, record)  # last: its presence marks a complete folder
    return folder


FILES_KEY = "files"  # saelab.json: {file name: {"bytes", "sha256"}} of the files written before it


def _file_id(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def check_complete(folder: str | Path, record: dict) -> None:
    """DataError unless each file saelab.json names is the one written with it (no partial or mixed folder)."""
    files = record.get(FILES_KEY)
    if files is None:
        return  # written before saelab recorded its files: nothing to compare
    if not isinstance(files, dict):
        raise DataError(f"{Path(folder) / SAELAB_CFG}: {FILES_KEY}={files!r} must be an object")
    for name, want in files.items():
        path = Path(folder) / str(name)
        if name not in (WEIGHTS_FILE, SAELENS_CFG) or not isinstance(want, dict):
            raise DataError(f"{Path(folder) / SAELAB_CFG}: {FILES_KEY} names {name!r}, not a file of an SAE folder")
        try:
            have = _file_id(path)
        except OSError as e:
            raise DataError(
                f"{path}: a partial SAE folder ({e.strerror or e}); retrain or resume the run that wrote it"
            ) from None
        if have != want:
            raise DataError(
                f"{path}: not the file {SAELAB_CFG} was written with (a partial or mixed folder); "
                "retrain or resume the run that wrote it"
            )


def partial_saelab_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a cfg.json saelab wrote but no saelab.json: a save killed before its last file."""
    folder = Path(folder)
    if (folder / SAELAB_CFG).exists() or not (folder / SAELENS_CFG).is_file():
        return False
    try:
        cfg = json.loads((folder / SAELENS_CFG).read_text())
    except (ValueError, RecursionError, OSError):
        return False
    return isinstance(cfg, dict) and isinstance(cfg.get("metadata"), dict) and "saelab_method" in cfg["metadata"]


def read_saelab_record(folder: str | Path) -> dict:
    """The saelab.json of an SAE folder (DataError if missing or unreadable)."""
    path = Path(folder) / SAELAB_CFG
    if not Path(folder).is_dir():
        raise DataError(f"sae={str(folder)!r}: not a folder")
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"sae={str(folder)!r}: no {SAELAB_CFG} (not a saelab SAE folder)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: unreadable JSON ({e.msg} at line {e.lineno})") from None
    except (ValueError, RecursionError, OSError) as e:  # not UTF-8, nested beyond reason, a folder
        raise DataError(f"{path}: unreadable JSON ({type(e).__name__})") from None
    _check_record_types(path, record)
    return record


# saelab.json entries every reader takes for objects (None: may be null), and the split's fields.
_OBJECT_ENTRIES = {
    "sae": False,
    "train": False,
    "split": False,
    "eval": False,
    "files": False,
    "source": True,
    "target_l0": True,
    "convergence": True,
}


def _check_record_types(path: Path, record) -> None:
    """DataError naming the entry of a saelab.json whose type no reader could use (one line, never a traceback later)."""
    if not isinstance(record, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(record).__name__}")
    for key, nullable in _OBJECT_ENTRIES.items():
        if key in record and not isinstance(record[key], dict) and not (nullable and record[key] is None):
            raise DataError(f"{path}: {key}={str(record[key])[:40]!r} must be an object")
    split, train = record.get("split") or {}, record.get("train") or {}
    rows = split.get("eval_rows")
    if "eval_rows" in split and not (
        isinstance(rows, list) and len(rows) == 2 and all(type(v) is int for v in rows) and 0 <= rows[0] <= rows[1]
    ):
        raise DataError(f"{path}: split.eval_rows={str(rows)[:40]!r} must be [lo, hi] with 0 ≤ lo ≤ hi")
    for where, entry, key in (("split", split, "eval_file"), ("train", train, "activations")):
        if entry.get(key) is not None and not isinstance(entry.get(key), str):
            raise DataError(f"{path}: {where}.{key}={str(entry.get(key))[:40]!r} must be a path")


def load_sae(folder: str | Path, device: str = "cpu"):
    """Rebuild a SparseAutoencoder from its folder (saelab's, or one SAELens or sparsify wrote), in eval mode."""
    if partial_saelab_folder(folder):
        raise DataError(
            f"sae={str(folder)!r}: a partial saelab folder ({SAELENS_CFG} but no {SAELAB_CFG}: its save was cut short); "
            "retrain or resume the run that wrote it"
        )
    if Path(folder).is_dir() and not (Path(folder) / SAELAB_CFG).exists() and foreign_format(folder) is not None:
        return load_foreign(folder).to(device)
    record = read_saelab_record(folder)
    check_complete(folder, record)
    try:
        cfg = SAEConfig.from_dict(record["sae"])
    except (KeyError, TypeError) as e:
        raise DataError(f"{Path(folder) / SAELAB_CFG}: bad 'sae' entry ({e})") from None
    try:
        tensors = load_file(str(Path(folder) / WEIGHTS_FILE))
    except (FileNotFoundError, SafetensorError, OSError) as e:
        raise DataError(f"{Path(folder) / WEIGHTS_FILE}: unreadable weights ({e})") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise DataError(f"{Path(folder) / WEIGHTS_FILE}: {name} holds NaN or infinite values")
    sae = SparseAutoencoder(cfg)
    s = float(sae.normalizer.factor) if cfg.normalize == "scalar" else 1.0
    b_enc = sae.activation.saelens_encoder_bias
    expected = {
        "W_enc": (cfg.d_in, cfg.n_latents),
        b_enc: (cfg.n_latents,),
        "W_dec": (cfg.n_latents, cfg.d_in),
        "b_dec": (cfg.d_in,),
    }
    for name, shape in expected.items():
        if name not in tensors:
            raise DataError(f"{Path(folder) / WEIGHTS_FILE}: missing tensor {name!r}")
        if tuple(tensors[name].shape) != shape:
            raise DataError(
                f"{Path(folder) / WEIGHTS_FILE}: {name} has shape {tuple(tensors[name].shape)}, config says {shape}"
            )
    with torch.no_grad():
        sae.W_enc.copy_(tensors["W_enc"] / s)
        sae.b_enc.copy_(tensors[b_enc])
        sae.W_dec.copy_(tensors["W_dec"] * s)
        sae.b_dec.copy_(tensors["b_dec"] * s)
    sae.activation.import_tensors({k: v for k, v in tensors.items() if k not in expected})
    sae.cfg.site = site_from_source(record.get("source"))
    return sae.to(device).eval()
