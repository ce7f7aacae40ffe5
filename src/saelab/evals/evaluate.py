"""One way to evaluate an SAE: the CLI, the Python API and the testbeds all call `evaluate`.

It accepts the SAE as a module or a folder, the data as a store, a path, a numpy array or a
tensor, and by default uses the held-out rows when the data is the SAE's own training file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from saelab.data.store import ActivationStore
from saelab.devices import check_device
from saelab.errors import ConfigError, DataError
from saelab.evals.reconstruction import EPS_L0, ReconstructionResult, evaluate_batches
from saelab.formats.folder import SAELAB_CFG, load_sae, read_saelab_record

ROW_CHOICES = ("auto", "all", "held-out")


def as_store(data, name: str = "activations") -> ActivationStore:
    """An ActivationStore over a store, a path (file or folder), a numpy array or a tensor."""
    if isinstance(data, ActivationStore):
        return data
    if isinstance(data, (str, Path)):
        return ActivationStore(data)
    if isinstance(data, (np.ndarray, Tensor)):
        return ActivationStore.from_array(data, name=f"<{type(data).__name__} {tuple(data.shape)}>")
    raise ConfigError(name, type(data).__name__, "expected a path, an ActivationStore, a numpy array or a tensor")


def as_sae(sae, device: str | None = None) -> tuple[torch.nn.Module, dict | None]:
    """(module, its saelab.json record or None) from a module or a folder path; `device` moves it there (a module in place)."""
    if device is not None:
        check_device(device)
    if isinstance(sae, torch.nn.Module):
        return (sae.to(device) if device is not None else sae), None
    if isinstance(sae, str) and sae.startswith("hf://"):
        from saelab.formats.hub import download  # the Hub client is imported only for hf:// addresses

        sae = download(sae)
    if isinstance(sae, (str, Path)):
        module = load_sae(sae, device or "cpu")
        # A folder SAELens or sparsify wrote has no saelab.json: no training split to hold out.
        return module, read_saelab_record(sae) if (Path(sae) / SAELAB_CFG).exists() else None
    raise ConfigError("sae", type(sae).__name__, "expected an SAE module or a folder path")


def held_out_rows(record: dict | None, store: ActivationStore) -> tuple[int, int] | None:
    """The held-out row range when `store` is the training file recorded in `record` (and no separate eval file)."""
    if not record:
        return None
    train_path = (record.get("train") or {}).get("activations")
    split = record.get("split") or {}
    if not train_path or split.get("eval_file") or "eval_rows" not in split:
        return None
    try:
        same = Path(train_path).resolve() == store.path.resolve()
    except OSError:
        return None
    if not same:
        return None
    lo, hi = split["eval_rows"]
    if hi > store.n_rows:
        raise DataError(f"saelab.json: split.eval_rows={[lo, hi]} lies outside the {store.n_rows} rows of {store.path}")
    return lo, hi


def resolve_rows(rows, record: dict | None, store: ActivationStore) -> tuple[tuple[int, int], str]:
    """((lo, hi), label) for `rows` = "auto" | "all" | "held-out" | (lo, hi)."""
    if isinstance(rows, (tuple, list)):
        lo, hi = (int(v) for v in rows)
        if not 0 <= lo < hi <= store.n_rows:
            raise ConfigError("rows", list(rows), f"must satisfy 0 ≤ lo < hi ≤ {store.n_rows}")
        return (lo, hi), f"{lo}:{hi}"
    if rows not in ROW_CHOICES:
        raise ConfigError("rows", rows, f"must be one of {', '.join(ROW_CHOICES)} or a (lo, hi) pair")
    held = held_out_rows(record, store) if rows != "all" else None
    if rows == "held-out" and held is None:
        raise ConfigError("rows", rows, "the data is not the SAE's recorded training file, so it has no held-out rows")
    if held is not None:
        return held, "held-out"
    return (0, store.n_rows), "all"


@torch.no_grad()
def evaluate(
    sae,
    data,
    *,
    true_dictionary=None,
    rows="auto",
    k: int | None = None,
    batch_size: int = 8192,
    scan: bool = True,
    eps_l0: float = EPS_L0,
    on_codes: Callable[[Tensor, int], None] | None = None,
    device: str | None = None,
) -> ReconstructionResult:
    """Reconstruction and sparsity metrics of `sae` on `data` (see the module docstring for the accepted forms).

    `k` evaluates a TopK-family SAE at another k; `on_codes(z, first_row)` sees every batch's code
    (the OthelloGPT score collects them from the same pass). `device` moves the SAE there first;
    batches always go to the SAE's device.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("batch_size", batch_size, "must be an integer ≥ 1")
    if not (isinstance(eps_l0, (int, float)) and eps_l0 >= 0 and eps_l0 == eps_l0):
        raise ConfigError("eps_l0", eps_l0, "must be a number ≥ 0")
    module, record = as_sae(sae, device)
    if k is not None:
        if not hasattr(module.activation.params, "k"):
            raise ConfigError("k", k, f"method {module.cfg.method!r} has no k")
        module.activation = module.activation.with_params(k=k)
    store = as_store(data)
    if store.d_in != module.cfg.d_in:
        raise DataError(f"activations={str(store.path)!r}: d_in is {store.d_in}, the SAE expects {module.cfg.d_in}")
    if scan:
        store.scan_finite()
    (lo, hi), label = resolve_rows(rows, record, store)
    dictionary = None
    if true_dictionary is not None:
        d = as_store(true_dictionary, "true_dictionary")
        d.scan_finite()
        dictionary = torch.from_numpy(d.read_range(0, d.n_rows))
    device = next(module.parameters()).device

    def batches():
        for start in range(lo, hi, batch_size):
            yield torch.from_numpy(store.read_range(start, min(hi, start + batch_size))).to(device)

    result = evaluate_batches(
        module, batches(), dictionary, on_codes=(lambda z, i: on_codes(z, lo + i)) if on_codes else None, eps_l0=eps_l0
    )
    result.rows = label
    result.method = module.cfg.method
    return result
