"""The Python API: `saelab.train(activations, …)` and `saelab.evaluate(sae, data)` on paths, arrays or tensors."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from saelab.config import SAE_FIELDS, TRAIN_FIELDS
from saelab.data.store import ActivationStore
from saelab.errors import ConfigError
from saelab.evals.evaluate import evaluate
from saelab.formats.folder import load_sae
from saelab.methods import activation_class, penalty_class
from saelab.methods.mapping import run_from_mapping
from saelab.methods.topk import TopK
from saelab.training.factory import make_trainer

__all__ = ["evaluate", "sparsity_warning", "train"]


class _DefaultK(int):
    """The default k (32): a method without a k ignores it, while an explicit k there is an error."""


DEFAULT_K = _DefaultK(32)
# Keys that are neither config fields nor method parameters but are fine in a config mapping.
_MAPPING_KEYS = {"method_params", "penalty_params"}


def sparsity_warning(method: str, penalty: str | None, target_l0: float | None) -> str | None:
    """The warning for a method that is not sparse by itself trained without a penalty (None when something makes it sparse)."""
    cls = activation_class(method)
    # Only ReLU has neither a k, a threshold nor its own sparsity coefficient: without a penalty it is a dense autoencoder.
    if (
        penalty is None
        and target_l0 is None
        and cls.sparsity_knob is None
        and not {f.name for f in dataclasses.fields(cls.Params)}
    ):
        return (
            f"method {method!r} without a penalty: nothing makes the code sparse "
            "(add --penalty l1 --alpha A, or --target-l0 L, or use a TopK-family method)"
        )
    return None


def _option_names(method: str, penalty: str | None) -> set[str]:
    names = set(TRAIN_FIELDS) | set(SAE_FIELDS) | _MAPPING_KEYS
    names |= {f.name for f in dataclasses.fields(activation_class(method).Params)}
    if penalty is not None:
        names |= {f.name for f in dataclasses.fields(penalty_class(penalty).Params)}
    return names


def _activations_store(activations) -> tuple[str, ActivationStore | None]:
    """(what the run records as its activations, the in-memory store or None for a path)."""
    if isinstance(activations, (str, Path)):
        return str(activations), None
    if isinstance(activations, (np.ndarray, torch.Tensor)):
        dtype = str(activations.dtype).removeprefix("torch.")
        label = f"<{dtype} {type(activations).__name__} {list(activations.shape)}>"
        return label, ActivationStore.from_array(activations, name=label)
    raise ConfigError("activations", type(activations).__name__, "expected a path, a numpy array or a tensor")


def train(
    activations,
    method: str = TopK.name,
    k: int = DEFAULT_K,
    n_latents: int = 4096,
    out=None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    **options,
):
    """Train one SAE on `activations` (path, numpy array [N, d_in] or tensor) and return it loaded, as `saelab.load` does.

    `options` are SAEConfig / TrainConfig fields and method or penalty parameters (`steps`,
    `batch_size`, `lr`, `normalize`, `penalty`, `alpha`, `auxk`, `eps`, …); an unknown one is a
    ConfigError naming it. With `out` the run folder is written there (as `saelab train --out`)
    and nothing is written elsewhere; without, training runs in a temporary folder that is removed.

    An array or tensor (float32, float16 or bfloat16; a tensor on an accelerator is copied to the
    CPU first) is trained on in place, through the same Trainer as a file: it is never written to
    disk and never widened whole. Each batch is gathered and converted to float32 on its own, so
    the memory used beyond the data itself is a few batches, the initialization sample (16,384
    rows) and the evaluation's chunks, all float32; float64 input is converted to float32 once.
    saelab.json records the data as a label such as `<bfloat16 Tensor [N, d_in]>`. The same
    values saved as .npy train the same SAE with the same seed.
    """
    penalty = options.get("penalty")
    for name, value in options.items():
        if name not in _option_names(method, penalty):
            raise ConfigError(
                name,
                value,
                "unknown option (expected a SAEConfig or TrainConfig field or a parameter of "
                f"method {method!r}" + (f" or penalty {penalty!r})" if penalty else ")"),
            )
    takes_k = "k" in _option_names(method, penalty)
    if not takes_k and not isinstance(k, _DefaultK):
        raise ConfigError(
            "k", k, f"method {method!r}" + (f" and penalty {penalty!r} take" if penalty else " takes") + " no k"
        )
    mapping = {**options, "method": method, "n_latents": n_latents}
    if takes_k and "k" not in options:
        mapping["k"] = int(k)
    message = sparsity_warning(method, penalty, options.get("target_l0"))
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=2)
    mapping["activations"], store = _activations_store(activations)
    with contextlib.ExitStack() as scratch:
        folder = (
            Path(out)
            if out is not None
            else Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="saelab-train-"))) / "sae"
        )
        mapping["out"] = str(folder)
        run = run_from_mapping(mapping)
        make_trainer(run, progress=progress, store=store).fit(resume=resume, overwrite=overwrite)
        return load_sae(folder)
