"""Saving and loading: atomic writes, the SAE folder (SAELens cfg.json + safetensors + saelab.json)."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saelab.errors import DataError, SaelabError

WEIGHTS_FILE = "sae_weights.safetensors"
SAELENS_CFG = "cfg.json"
SAELAB_CFG = "saelab.json"
SAELENS_FORMAT_VERSION = "6.54.12"


TEMP_PREFIX = ".tmp-"  # every atomic write's temporary file starts with this; cleaners match on it


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def _replacing(path: str | Path) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it becomes `path` by one rename, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600; outputs should read like any other file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call `write(file)` on a temporary file, fsync it and rename it to `path`: readers never see half a file."""
    with _replacing(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes to `path` via a temporary file and a rename, so readers never see half a file."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Atomic JSON write, indented."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """torch.save through a temporary file and a rename."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors save through a temporary file and a rename."""
    with _replacing(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


# ---- the SAE folder ------------------------------------------------------------------------

def saelens_cfg(sae) -> dict:
    """SAELens-readable cfg.json for this SAE (architecture from its activation)."""
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
        },
    }
    out.update(extra)
    return out


def raw_space_tensors(sae) -> dict[str, torch.Tensor]:
    """Weights acting on raw activations: a scalar normalization factor s is folded in."""
    s = float(sae.normalizer.factor) if sae.cfg.normalize == "scalar" else 1.0
    tensors = {
        "W_enc": sae.W_enc.detach() * s,
        "b_enc": sae.b_enc.detach().clone(),
        "W_dec": sae.W_dec.detach() / s,
        "b_dec": sae.b_dec.detach() / s,
    }
    tensors.update({k: v.detach() for k, v in sae.activation.export_tensors().items()})
    return {k: v.float().contiguous() for k, v in tensors.items()}


def save_sae(sae, folder: str | Path, extra: dict | None = None) -> Path:
    """Write cfg.json, sae_weights.safetensors and saelab.json (full config + `extra`) atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(folder / WEIGHTS_FILE, raw_space_tensors(sae))
    atomic_write_json(folder / SAELENS_CFG, saelens_cfg(sae))
    from saelab import __version__

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


def load_sae(folder: str | Path, device: str = "cpu"):
    """Rebuild a SparseAutoencoder from its folder, in eval mode."""
    from saelab.config import SAEConfig
    from saelab.sae import SparseAutoencoder

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
    expected = {"W_enc": (cfg.d_in, cfg.n_latents), "b_enc": (cfg.n_latents,), "W_dec": (cfg.n_latents, cfg.d_in), "b_dec": (cfg.d_in,)}
    for name, shape in expected.items():
        if name not in tensors:
            raise DataError(f"{Path(folder) / WEIGHTS_FILE}: missing tensor {name!r}")
        if tuple(tensors[name].shape) != shape:
            raise DataError(f"{Path(folder) / WEIGHTS_FILE}: {name} has shape {tuple(tensors[name].shape)}, config says {shape}")
    with torch.no_grad():
        sae.W_enc.copy_(tensors["W_enc"] / s)
        sae.b_enc.copy_(tensors["b_enc"])
        sae.W_dec.copy_(tensors["W_dec"] * s)
        sae.b_dec.copy_(tensors["b_dec"] * s)
    sae.activation.import_tensors({k: v for k, v in tensors.items() if k not in expected})
    return sae.to(device).eval()


def describe_error(e: Exception) -> str:
    """One line for any error (used by the CLI's last-resort handler)."""
    if isinstance(e, SaelabError):
        return str(e)
    return f"{type(e).__name__}: {e}"
