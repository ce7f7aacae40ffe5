"""SAE folders written by SAELens or EleutherAI sparsify, rebuilt as saelab SparseAutoencoders.

Both libraries' inference maps are saelab's for the architectures read here, so the weights are
copied as they are, except where a library option has an exact algebraic equivalent that is folded
into them (SAELens's `apply_b_dec_to_input=False` here, a method's own options in its `from_saelens`).
Which method a folder holds, and its own tensors, the methods say (methods.registry's readers): this
module knows the files. Anything else is refused with a DataError that names the option, never
loaded approximately.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saelab.config import SAEConfig
from saelab.errors import ConfigError, DataError
from saelab.methods.registry import saelens_architectures, saelens_reader, sparsify_reader
from saelab.model.sae import SparseAutoencoder
from saelab.model.site import ModelSite

CFG_FILE = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
# SAELens input normalizations whose inference map is the identity (the factor is folded into the weights).
IDENTITY_NORMALIZATIONS = ("none", "expected_average_only_in")


@dataclass
class Imported:
    """What a foreign folder holds, in saelab's terms: config, SAELens-shaped weights, hook."""

    cfg: SAEConfig
    W_enc: torch.Tensor  # [d_in, n]
    b_enc: torch.Tensor  # [n]
    W_dec: torch.Tensor  # [n, d_in]
    b_dec: torch.Tensor  # [d_in]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # the method's own tensors (threshold, r_mag, b_mag)
    site: ModelSite | None = None
    source_format: str = ""


def foreign_format(folder: str | Path) -> str | None:
    """ "saelens", "sparsify", or None when the folder holds neither library's files."""
    folder = Path(folder)
    if not (folder / CFG_FILE).is_file():
        return None
    if (folder / SAELENS_WEIGHTS).is_file():
        return "saelens"
    if (folder / SPARSIFY_WEIGHTS).is_file():
        return "sparsify"
    return None


def load_foreign(folder: str | Path) -> SparseAutoencoder:
    """A SparseAutoencoder (eval mode, float32, CPU) equal to the SAELens or sparsify SAE in `folder`."""
    kind = foreign_format(folder)
    if kind is None:
        raise DataError(
            f"sae={str(folder)!r}: neither a saelab folder (saelab.json) nor a SAELens ({CFG_FILE} + {SAELENS_WEIGHTS}) "
            f"or sparsify ({CFG_FILE} + {SPARSIFY_WEIGHTS}) folder"
        )
    try:
        imported = read_saelens(folder) if kind == "saelens" else read_sparsify(folder)
        for name, tensor in {
            "W_enc": imported.W_enc,
            "b_enc": imported.b_enc,
            "W_dec": imported.W_dec,
            "b_dec": imported.b_dec,
            **imported.extra,
        }.items():
            if not bool(torch.isfinite(tensor).all()):
                raise DataError(f"{folder}: {name} holds NaN or infinite values")
        return build_sae(imported)
    except (RuntimeError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        # A value of a type or shape no check above foresaw: still one line naming the folder, never a traceback.
        raise DataError(
            f"{folder}: unreadable {kind} folder ({type(e).__name__}: {' '.join(str(e).split())[:160]})"
        ) from None


def build_sae(imp: Imported) -> SparseAutoencoder:
    """The SparseAutoencoder holding `imp`'s weights, with its hook recorded on cfg.site."""
    try:
        sae = SparseAutoencoder(imp.cfg)
    except ConfigError as e:
        raise DataError(f"{imp.source_format} folder: its config has no saelab equivalent ({e})") from None
    expected = {
        "W_enc": (imp.cfg.d_in, imp.cfg.n_latents),
        "b_enc": (imp.cfg.n_latents,),
        "W_dec": (imp.cfg.n_latents, imp.cfg.d_in),
        "b_dec": (imp.cfg.d_in,),
    }
    with torch.no_grad():
        for name, shape in expected.items():
            value = getattr(imp, name)
            if tuple(value.shape) != shape:
                raise DataError(
                    f"{imp.source_format} folder: {name} has shape {tuple(value.shape)}, its config says {shape}"
                )
            getattr(sae, name).copy_(value.float())
    sae.activation.import_tensors({k: v.float() for k, v in imp.extra.items()})
    sae.cfg.site = imp.site
    return sae.eval()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (ValueError, RecursionError, OSError) as e:
        raise DataError(f"{path}: unreadable JSON ({getattr(e, 'msg', type(e).__name__)})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (FileNotFoundError, SafetensorError, OSError) as e:
        raise DataError(f"{path}: unreadable weights ({e})") from None


def _need(tensors: dict, name: str, path: Path) -> torch.Tensor:
    if name not in tensors:
        raise DataError(f"{path}: missing tensor {name!r}")
    return tensors[name].float()


def _shaped(tensor: torch.Tensor, name: str, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    """`tensor` when it has `shape`; DataError naming the file and tensor otherwise."""
    if tuple(tensor.shape) != shape:
        raise DataError(f"{path}: {name} has shape {tuple(tensor.shape)}, expected {shape}")
    return tensor


def _int(cfg: dict, key: str, path: Path) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise DataError(f"{path}: {key}={value!r} must be an integer ≥ 1")
    return int(value)


# ---- SAELens ----------------------------------------------------------------------------------


@dataclass
class _SAELensFolder:
    """methods.base.SAELensFolder: what a method's `from_saelens` reads, with errors naming the file."""

    cfg: dict
    n_latents: int
    weights: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]
    cfg_path: Path
    w_path: Path

    @property
    def tensor_names(self) -> set[str]:
        """Every tensor the weights file holds."""
        return set(self.tensors)

    def tensor(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Tensor `name` as float32, of `shape` when given."""
        value = _need(self.tensors, name, self.w_path)
        return value if shape is None else _shaped(value, name, shape, self.w_path)

    def shaped(self, tensor: torch.Tensor, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """`tensor` when it has `shape`."""
        return _shaped(tensor, name, shape, self.w_path)

    def integer(self, key: str) -> int:
        """cfg[key] as an integer ≥ 1."""
        return _int(self.cfg, key, self.cfg_path)


def read_saelens(folder: str | Path) -> Imported:
    """A SAELens folder of an architecture some method reads (methods.saelens_reader; SAELens 6, or 5's flat cfg)."""
    folder = Path(folder)
    cfg_path, w_path = folder / CFG_FILE, folder / SAELENS_WEIGHTS
    cfg = _read_json(cfg_path)
    tensors = _read_tensors(w_path)
    arch = cfg.get("architecture", "standard")
    norm = cfg.get("normalize_activations", "none")
    if norm not in IDENTITY_NORMALIZATIONS:
        raise DataError(
            f"{cfg_path}: normalize_activations={norm!r} is not supported (saelab reads {', '.join(IDENTITY_NORMALIZATIONS)})"
        )
    d_in, n = _int(cfg, "d_in", cfg_path), _int(cfg, "d_sae", cfg_path)
    # SAELens 5 saved some methods (TopK) as architecture "standard" with their activation_fn, k in its kwargs.
    legacy_fn = cfg.get("activation_fn_str", cfg.get("activation_fn")) if arch == "standard" else None
    cls = saelens_reader(arch, legacy_fn)
    if cls is not None and cls.saelens_name != arch:
        arch, cfg = cls.saelens_name, {**cfg, "k": (cfg.get("activation_fn_kwargs") or {}).get("k")}
    bias = cls.saelens_encoder_bias if cls is not None else "b_enc"  # a gated SAE's b_gate plays saelab's b_enc
    W_enc, b_enc = _need(tensors, "W_enc", w_path), _need(tensors, bias, w_path)
    W_dec, b_dec = _need(tensors, "W_dec", w_path), _need(tensors, "b_dec", w_path)
    _shaped(W_enc, "W_enc", (d_in, n), w_path), _shaped(b_enc, bias, (n,), w_path)
    _shaped(W_dec, "W_dec", (n, d_in), w_path), _shaped(b_dec, "b_dec", (d_in,), w_path)
    if cls is None:
        raise DataError(
            f"{cfg_path}: architecture={arch!r} is not supported (saelab reads {', '.join(saelens_architectures())})"
        )
    weights = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    params, extra = cls.from_saelens(_SAELensFolder(cfg, n, weights, tensors, cfg_path, w_path))
    W_enc, b_enc, W_dec = weights["W_enc"], weights["b_enc"], weights["W_dec"]
    if not cfg.get("apply_b_dec_to_input", True):
        # SAELens encodes x·W_enc + b_enc; saelab (x − b_dec)·W_enc + b_enc', so b_enc' = b_enc + b_dec·W_enc.
        shift = b_dec @ W_enc
        b_enc = b_enc + shift
        extra = cls.shift_saelens_input(extra, shift)
    meta = (
        cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else cfg
    )  # SAELens 5 kept these at the top level
    sae_cfg = SAEConfig(
        n_latents=n, method=cls.name, method_params=params, d_in=d_in, decoder_unit_norm=False, name=folder.name or None
    )
    try:
        site = ModelSite.from_metadata(meta)
    except DataError as e:
        raise DataError(f"{cfg_path}: {e}") from None
    return Imported(sae_cfg, W_enc, b_enc, W_dec, b_dec, extra, site, "SAELens")


# ---- EleutherAI sparsify ----------------------------------------------------------------------


def read_sparsify(folder: str | Path) -> Imported:
    """A sparsify SparseCoder folder: encoder.weight [n, d], encoder.bias [n], W_dec [n, d], b_dec [d]; TopK at cfg k."""
    folder = Path(folder)
    cfg_path, w_path = folder / CFG_FILE, folder / SPARSIFY_WEIGHTS
    cfg = _read_json(cfg_path)
    tensors = _read_tensors(w_path)
    for option, why in (
        ("transcode", "a transcoder predicts another site, it is not an autoencoder"),
        ("skip_connection", "its W_skip term has no saelab equivalent"),
    ):
        if cfg.get(option):
            raise DataError(f"{cfg_path}: {option}=true is not supported ({why})")
    cls = sparsify_reader(cfg)
    if cls is None:
        raise DataError(
            f"{cfg_path}: activation={cfg.get('activation')!r} is not supported (saelab reads sparsify's top-k SAEs)"
        )
    enc_w, enc_b = _need(tensors, "encoder.weight", w_path), _need(tensors, "encoder.bias", w_path)
    W_dec, b_dec = _need(tensors, "W_dec", w_path), _need(tensors, "b_dec", w_path)
    if enc_w.ndim != 2:
        raise DataError(f"{w_path}: encoder.weight has shape {tuple(enc_w.shape)}, expected [n_latents, d_in]")
    n, d_in = enc_w.shape
    (
        _shaped(enc_b, "encoder.bias", (n,), w_path),
        _shaped(W_dec, "W_dec", (n, d_in), w_path),
        _shaped(b_dec, "b_dec", (d_in,), w_path),
    )
    if "d_in" in cfg and cfg["d_in"] != d_in:
        raise DataError(f"{cfg_path}: d_in={cfg['d_in']!r}, but encoder.weight has shape {tuple(enc_w.shape)}")
    k = _int(cfg, "k", cfg_path)
    sae_cfg = SAEConfig(
        n_latents=n,
        method=cls.name,
        method_params={"k": k},
        d_in=d_in,
        decoder_unit_norm=False,
        name=folder.name or None,
    )
    # sparsify encodes relu((x − b_dec)·encoder.weightᵀ + encoder.bias) then keeps the top k: saelab's TopK map.
    return Imported(sae_cfg, enc_w.T.contiguous(), enc_b, W_dec, b_dec, {}, None, "sparsify")
