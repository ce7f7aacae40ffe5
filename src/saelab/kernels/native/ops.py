"""Typed entry points to the native row kernels (rows.cpp); each checks its tensors and calls one C function.

Callers ask `usable(*tensors)` first and keep their torch path for when it says no (no compiler,
SAELAB_NATIVE=0, a GPU tensor). Outputs are fresh tensors; inputs are made contiguous here.
"""

from __future__ import annotations

import ctypes
import warnings

import torch
from torch import Tensor

from saelab.kernels import threads
from saelab.kernels.native import build

_warned = False


def usable(*tensors: Tensor) -> bool:
    """Whether the native kernels can run on these tensors (all on the CPU, and the library loads)."""
    global _warned
    if any(t.device.type != "cpu" for t in tensors):
        return False
    try:
        build.load()
    except build.Unavailable as err:
        if not _warned and build.enabled():
            warnings.warn(f"saelab: native row kernels unavailable ({err}); using torch's operators", stacklevel=2)
        _warned = True
        return False
    return True


def why_unavailable() -> str | None:
    """None when the native kernels load here, else the reason."""
    try:
        build.load()
    except build.Unavailable as err:
        return str(err)
    return None


def threading() -> str:
    """How the loaded kernels run their threads: "OpenMP" (the pool torch's operators use) or "std::threads"."""
    return "OpenMP" if build.load().sl_openmp() else "std::threads"


def _ptr(t: Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else None)


def _index(t: Tensor) -> Tensor:
    return t.to(torch.int64).contiguous()


def _float(t: Tensor) -> Tensor:
    return t.to(torch.float32).contiguous()


def sort_by_latent(latents: Tensor, n_latents: int) -> tuple[Tensor, Tensor]:
    """(order, crow): a stable sort of the entries by latent (as torch.argsort(stable=True)) and each latent's range in it."""
    latents = _index(latents)
    if latents.numel() and (int(latents.min()) < 0 or int(latents.max()) >= n_latents):
        raise ValueError(f"latent ids must lie in [0, {n_latents})")
    order = torch.empty(latents.numel(), dtype=torch.int64)
    crow = torch.empty(n_latents + 1, dtype=torch.int64)
    build.load().sl_sort_by_latent(_ptr(latents), latents.numel(), n_latents, _ptr(order), _ptr(crow))
    return order, crow


def rows_in_order(order: Tensor, codes: list[tuple[int, int, int]]) -> Tensor:
    """The row of each entry order[i] of fixed-width codes stacked one after another.

    `codes`: (entries, width, row offset) per code; entry e of code c sits in row e // width + offset.
    """
    if any(width < 1 or size % width for size, width, _ in codes):
        raise ValueError(f"each code's entries must fill whole rows of its width, not {codes}")
    order = _index(order)
    if order.numel() != sum(size for size, _, _ in codes):
        raise ValueError(f"{order.numel()} entries in the order, {sum(c[0] for c in codes)} in the codes")
    layout = torch.tensor([v for code in codes for v in code], dtype=torch.int64)
    out = torch.empty(order.numel(), dtype=torch.int64)
    build.load().sl_rows_in_order(_ptr(order), order.numel(), _ptr(layout), len(codes), _ptr(out))
    return out


def segment_dots_sums(
    by_latent: Tensor | None,
    table: Tensor,
    sorted_rows: Tensor,
    order: Tensor,
    weights: Tensor,
    crow: Tensor,
    lo: int = 0,
    hi: int | None = None,
    dots: bool = True,
    sums: bool = True,
    out: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """For the latents lo ≤ i < hi of a latent-sorted entry set, in one pass over the gathered `table` rows:
    (dot_e = ⟨by_latent[latent_e], table[row_e]⟩ in entry order, or None;
     out[i − lo] = Σ_{e of latent i} weights[e] · table[row_e] as [hi − lo, d] (into `out` if given), or None)."""
    hi = crow.numel() - 1 if hi is None else hi
    if dots and by_latent is None:
        raise ValueError("dots need the by_latent table")
    table, weights = _float(table), _float(weights)
    by_latent = _float(by_latent) if dots else None
    sorted_rows, order, crow = _index(sorted_rows), _index(order), _index(crow)
    d = table.shape[1]
    whole = lo == 0 and hi == crow.numel() - 1
    out_dots = (torch.empty if whole else torch.zeros)(order.numel()) if dots else None  # others' entries: 0
    out_sums = None
    if sums:
        out_sums = out if out is not None else torch.empty(hi - lo, d)
        if out_sums.shape != (hi - lo, d) or out_sums.dtype != torch.float32 or not out_sums.is_contiguous():
            raise ValueError(f"out must be a contiguous float32 [{hi - lo}, {d}] tensor")
    build.load().sl_segment_dots_sums(
        _ptr(by_latent), _ptr(table), d, _ptr(sorted_rows), _ptr(order), _ptr(weights), _ptr(crow), lo, hi,
        _ptr(out_dots), _ptr(out_sums), threads.sparse_threads(),
    )  # fmt: skip
    return out_dots, out_sums


def segment_sums_columns(
    table: Tensor, sorted_rows: Tensor, order: Tensor, weights: Tensor, crow: Tensor, out: Tensor
) -> Tensor:
    """segment_dots_sums's sums for every latent, written transposed into `out` ([d, n], rows contiguous): out[:, i] = Σ_e weights[e] · table[row_e]."""
    table, weights = _float(table), _float(weights)
    sorted_rows, order, crow = _index(sorted_rows), _index(order), _index(crow)
    n, d = crow.numel() - 1, table.shape[1]
    if out.shape != (d, n) or out.dtype != torch.float32 or out.stride(1) != 1:
        raise ValueError(f"out must be a float32 [{d}, {n}] tensor with contiguous rows")
    build.load().sl_segment_sums_columns(
        _ptr(table), d, _ptr(sorted_rows), _ptr(order), _ptr(weights), _ptr(crow), n, _ptr(out), out.stride(0),
        threads.sparse_threads(),
    )  # fmt: skip
    return out


def gather_sum(table: Tensor, latents: Tensor, values: Tensor, crow: Tensor) -> Tensor:
    """out[b] = Σ_{e in crow[b]:crow[b + 1]} values[e] · table[latents[e]] as float32 [B, d] (table float32 or bfloat16)."""
    if table.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"gather_sum reads float32 or bfloat16 tables, not {table.dtype}")
    table, values = table.contiguous(), _float(values)
    latents, crow = _index(latents), _index(crow)
    n_rows, d = crow.numel() - 1, table.shape[1]
    out = torch.empty(n_rows, d)
    build.load().sl_gather_sum(
        _ptr(table), int(table.dtype == torch.bfloat16), d, _ptr(latents), _ptr(values), _ptr(crow), n_rows,
        _ptr(out), threads.sparse_threads(),
    )  # fmt: skip
    return out


def topk_among(mat: Tensor, cols: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each row's k largest entries among columns `cols` of a float32/bfloat16 [B, n] matrix:
    (float32 values, positions in `cols`, the columns themselves), each [B, k].

    Positions come back ascending within each row; among equal values at the k-th place the first
    columns win (torch.topk may pick others of the same value).
    """
    if mat.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"topk_among reads float32 or bfloat16, not {mat.dtype}")
    cols = _index(cols)
    m = cols.numel()
    if not 1 <= k <= m:
        raise ValueError(f"k must lie in [1, {m}], not {k}")
    mat = mat.contiguous()
    rows = mat.shape[0]
    values = torch.empty(rows, k)
    local, ids = torch.empty(rows, k, dtype=torch.int64), torch.empty(rows, k, dtype=torch.int64)
    build.load().sl_topk_among(
        _ptr(mat), int(mat.dtype == torch.bfloat16), rows, mat.shape[1], _ptr(cols), m, k, _ptr(values), _ptr(local),
        _ptr(ids), threads.sparse_threads(),
    )  # fmt: skip
    return values, local, ids


def select_rows(
    pre: Tensor,
    bias: Tensor | None,
    count: int,
    group: int,
    sorted: bool,
    dead: Tensor | None = None,
    count_aux: int = 0,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """Per-row selections from P = x·W without its bias, in one read of each row (select.row_topk_with_bias):

    (values, columns) of each row's `count` largest entries of P + bias (the sum rounded to P's dtype
    as torch's add_ rounds it; P is left unchanged), by group maxima with `group` columns per group
    (1 = whole rows), by decreasing value if `sorted`, else by column — the exact top `count` under
    (value descending, column ascending), so among equal values at the last place the lower columns
    win; and, with `dead`, topk_among(P + bias, dead, count_aux)'s (values, positions in dead, latent ids).
    """
    if pre.dtype not in (torch.float32, torch.bfloat16) or not pre.is_contiguous():
        raise ValueError(f"select_rows reads a contiguous float32 or bfloat16 P, not {pre.dtype}")
    rows, n = pre.shape
    if not 1 <= count <= n or group < 1 or (group > 1 and (n % group or n // group < count)):
        raise ValueError(f"no selection of {count} in groups of {group} from {n} columns")
    if bias is not None:
        bias = bias.to(pre.dtype).contiguous()
        if bias.shape != (n,):
            raise ValueError(f"bias must have shape ({n},), not {tuple(bias.shape)}")
    values, cols = torch.empty(rows, count), torch.empty(rows, count, dtype=torch.int64)
    aux = None
    if dead is not None:
        dead = _index(dead)
        if not 1 <= count_aux <= dead.numel():
            raise ValueError(f"count_aux must lie in [1, {dead.numel()}], not {count_aux}")
        aux = tuple(torch.empty(rows, count_aux, dtype=t) for t in (torch.float32, torch.int64, torch.int64))
    build.load().sl_select_rows(
        _ptr(pre), int(pre.dtype == torch.bfloat16), rows, n, _ptr(bias), count, group, int(sorted), _ptr(values),
        _ptr(cols), _ptr(dead), dead.numel() if dead is not None else 0, count_aux,
        *(_ptr(t) for t in (aux or (None, None, None))), threads.sparse_threads(),
    )  # fmt: skip
    return values, cols, aux


def project_rows(rows: Tensor, grad: Tensor) -> None:
    """In place, for each row i of float32 [n, d] matrices: grad[i] −= (⟨grad[i], rows[i]⟩ / ‖rows[i]‖²)·rows[i]
    (the norm clamped at 1e-12), each row visited once."""
    for name, t in (("rows", rows), ("grad", grad)):
        if t.dtype != torch.float32 or t.dim() != 2 or not t.is_contiguous():
            raise ValueError(
                f"project_rows: {name} must be a contiguous float32 matrix, not {t.dtype} {tuple(t.shape)}"
            )
    if grad.shape != rows.shape:
        raise ValueError(f"project_rows: grad {tuple(grad.shape)} and rows {tuple(rows.shape)} differ")
    build.load().sl_project_rows(_ptr(rows), _ptr(grad), rows.shape[0], rows.shape[1], threads.sparse_threads())
