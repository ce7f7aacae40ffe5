"""Exact top-k selection over the dense pre-activations, cheaper than torch.topk on whole rows.

Row top-k by group maxima. Split each row's n entries into c = n/g groups of g (group j holds
columns j, j+c, …, j+(g−1)c, so the maxima are g contiguous slices max-ed together — one
vectorized pass). Every entry e of the row's top-k lies in one of the k groups with the largest
maxima: if e's group G were not among them, k other groups would have maxima ≥ max(G) ≥ e, i.e.
k entries ≥ e. So top-k(row) = top-k(entries of those k groups), and the values are exactly
torch.topk's (ties may pick other, equal-valued, columns — as torch.topk itself may).
torch.topk then runs on [B, c] and [B, k·g] instead of [B, n].

Batch top-K (BatchTopK, K = k·B over the flattened ReLU'd batch) by per-row candidates: take each
row's top m = 2k, keep the K largest positive candidates. A row none of whose m candidates was
left out may hold more winners than its candidates, so such "saturated" rows enter whole and the
K largest are chosen again; every other row's winners are among its candidates. Exact, ragged.

On a bfloat16 P (the sparse path under autocast) the selections return float32 values (exact
upcasts of the bfloat16 entries): the group maxima and the candidates are upcast before their
torch.topk, which on the CPU ran no faster on bfloat16 than on float32 (one run with other jobs
running: 129 vs 69 ms for the groups' top-32 at [4096, 1024]), and everything downstream sums in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.kernels.native import ops as native
from saelab.util import distributed

# Candidate groups must outnumber k by this factor for the grouped path to pay off.
_GROUPS_PER_K = 8
_GROUP_SIZES = (16, 8, 4)


def group_size(n: int, k: int) -> int:
    """The group size g used for a row top-k of k out of n (1 = plain torch.topk)."""
    for g in _GROUP_SIZES:
        if n % g == 0 and n // g >= _GROUPS_PER_K * k:
            return g
    return 1


def row_topk(mat: Tensor, k: int, sorted: bool = False) -> tuple[Tensor, Tensor]:
    """Values and column indices of each row's k largest entries of a [B, n] matrix."""
    rows, n = mat.shape
    g = group_size(n, k)
    if g == 1:
        values, cols = torch.topk(mat, k, dim=1, sorted=sorted)
        return _wide(values), cols
    c = n // g
    maxima = _wide(mat.reshape(rows, g, c).amax(dim=1))
    groups = torch.topk(maxima, k, dim=1, sorted=False).indices
    members = torch.arange(0, n, c, device=mat.device)
    cand_cols = (groups.unsqueeze(-1) + members).view(rows, k * g)
    values, pos = torch.topk(_wide(mat.gather(1, cand_cols)), k, dim=1, sorted=sorted)
    return values, cand_cols.gather(1, pos)


def row_topk_with_bias(
    pre: Tensor, bias: Tensor, k: int, sorted: bool, dead: Tensor | None, k_aux: int
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """row_topk(P + bias, k) from P without its bias, by the native kernels (callers check native.usable):
    (values, columns, and with `dead` each row's top-k_aux among those columns: values, positions, ids).

    The bias is added inside the selection, in the same read of each row of P that selects (and the
    dead columns are read while the row is in cache); torch's add_ would read and write P once more.
    """
    return native.select_rows(pre, bias, k, group_size(pre.shape[1], k), sorted, dead, k_aux)


def _wide(t: Tensor) -> Tensor:
    """`t` in float32 if it is in a narrower float type (an exact upcast), else `t` itself."""
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


def batch_topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """BatchTopK training selection: (rows, cols, values) of the k·B largest positive entries of
    ReLU(pre) over the whole batch, sorted row-major. Zeros are dropped: they add nothing to the
    code and get no gradient through the ReLU, so leaving them out changes neither."""
    rows, n = pre.shape
    # Data-parallel: this rank's winners of the global batch are among its own k·B_global largest.
    global_budget = k * distributed.global_rows(rows)  # ≤ B_global·n since k ≤ n
    budget = min(global_budget, rows * n)
    m = min(2 * -(-budget // rows), n)  # twice the mean winners per row: 2k in one process
    cand_vals, cand_cols = row_topk(pre, m)
    cand_rows = torch.arange(rows, device=pre.device).unsqueeze(1).expand(rows, m)
    cand_vals, cand_cols, cand_rows = cand_vals.reshape(-1), cand_cols.reshape(-1), cand_rows.reshape(-1)
    win = _largest_positive(cand_vals, budget)
    saturated = torch.bincount(cand_rows[win], minlength=rows) == m
    if m < n and bool(saturated.any()):
        # Rows that may hold winners beyond their candidates: consider all their entries.
        sat_rows = saturated.nonzero().squeeze(1)
        keep = ~saturated[cand_rows]
        full = _wide(pre.index_select(0, sat_rows))
        cand_vals = torch.cat([cand_vals[keep], full.reshape(-1)])
        cand_cols = torch.cat([cand_cols[keep], torch.arange(n, device=pre.device).repeat(sat_rows.numel())])
        cand_rows = torch.cat([cand_rows[keep], sat_rows.repeat_interleave(n)])
        win = _largest_positive(cand_vals, budget)
    r, c, v = cand_rows[win], cand_cols[win], cand_vals[win]
    threshold = distributed.kth_largest(v, global_budget)  # the global batch's k·B-th largest (None in one process)
    if threshold is not None:
        kept = v >= threshold
        r, c, v = r[kept], c[kept], v[kept]
    order = torch.argsort(r * n + c)
    return r[order], c[order], v[order]


def _largest_positive(values: Tensor, budget: int) -> Tensor:
    """Positions of the `budget` largest entries of a flat tensor, positive ones only."""
    top = torch.topk(values, min(budget, values.numel()), sorted=False).indices
    return top[values[top] > 0]
