"""Time each native row kernel (saelab/kernels/native) against the torch operators it replaces, side by side.

    .venv/bin/python bench/row_kernels.py                # (B, d, n) = (4096, 768, 16384), AuxK 384 of 30 % dead
    .venv/bin/python bench/row_kernels.py --json > r.jsonl

Each pass is timed on the same inputs both ways, interleaved repetition by repetition (medians):
  select        P + b_enc, each row's top-k (group maxima) and top-k_aux among the dead columns:
                torch add_ + select.row_topk + index_select + row_topk   vs  native select_rows
  select-main   the same without AuxK
  sort          the stable sort of the main + aux entries by latent: argsort + bincount  vs  counting sort
  dec-backward  ∂L/∂z dots and the decoder's per-latent sums over the main + aux entries:
                sparse_sampled_addmm + embedding_bag  vs  the fused native pass
  dec-backward-hot
                the same with every entry reading row 0, so the gathered rows stay in L1: what the
                pass costs without memory stalls (torch side: the dots alone)
  enc-sums      the encoder's per-latent sums over the same entries: embedding_bag  vs  native
  select-bf16, select-main-bf16
                the two selections on a bfloat16 P (the bias add rounded to bfloat16 on both sides)
  decode-aux    the aux code's decode Σ z·W_dec[latent]: embedding_bag  vs  native gather_sum
                (not adopted: no faster; listed so the comparison stays measured)
  unit-project  the decoder gradient's projection off each unit-norm row: norms, bmm, addcmul_  vs  project_rows
                (a native renormalization of the rows measured slower than torch's: 2.9 vs 2.2 ms)
Both sides use `--threads` threads. Results agree to rounding (checked here before timing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F

from saelab.kernels.native import ops
from saelab.kernels.select import group_size, row_topk


def cpu_line() -> str:
    """The CPU model and its vector flags that matter here."""
    model, flags = platform.processor(), ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = " ".join(f for f in line.split() if f.startswith(("avx2", "avx512")))
                break
    except OSError:
        pass
    return f"{model} ({flags})"


def once(fn) -> float:
    """Wall ms of one call."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def cases(B: int, d: int, n: int, k: int, k_aux: int, dead_fraction: float):
    """(name, torch fn, native fn, check) for every pass, on shared inputs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, d, generator=g)
    W_enc, b_enc = torch.randn(d, n, generator=g) / d**0.5, torch.randn(n, generator=g) / 10
    W_dec, G = torch.randn(n, d, generator=g), torch.randn(2 * B, d, generator=g)
    dead = (torch.rand(n, generator=g) < dead_fraction).nonzero().squeeze(1)
    P = x @ W_enc
    P_low, b_low = P.bfloat16(), b_enc.bfloat16()
    work, work_low = torch.empty_like(P), torch.empty_like(P_low)
    groups = group_size(n, k)

    def torch_select(aux: bool, low: bool = False):
        # The bias add's input, restored each time (timed on both sides: see native_select).
        buf = work_low.copy_(P_low) if low else work.copy_(P)
        buf.add_(b_low if low else b_enc)
        out = row_topk(buf, k)
        return out + (row_topk(buf.index_select(1, dead), k_aux) if aux else ())

    def native_select(aux: bool, low: bool = False):
        buf = work_low.copy_(P_low) if low else work.copy_(P)  # the same copy: the sides differ only by the selection
        return ops.select_rows(
            buf, b_low if low else b_enc, k, groups, False, dead if aux else None, k_aux if aux else 0
        )

    W_unit = W_dec / W_dec.norm(dim=1, keepdim=True)
    grad_a, grad_b = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)

    def torch_project():  # model.sae's torch path: norms, batched dots, one update
        sq = torch.linalg.vector_norm(W_unit, dim=-1).clamp_min(1e-12).square_()
        coef = torch.bmm(grad_a.unsqueeze(1), W_unit.unsqueeze(2)).view(-1).div_(sq)
        grad_a.addcmul_(W_unit, coef.unsqueeze(1), value=-1.0)

    main_vals, main = torch_select(False)
    aux_vals, aux_local = row_topk((P + b_enc).index_select(1, dead), k_aux)
    latents = torch.cat([main.reshape(-1), dead[aux_local].reshape(-1)])
    values = torch.cat([main_vals.reshape(-1), aux_vals.reshape(-1)]).relu()
    rows = torch.cat([torch.arange(B).repeat_interleave(k), torch.arange(B, 2 * B).repeat_interleave(k_aux)])
    order, crow = ops.sort_by_latent(latents, n)
    sorted_rows = rows[order]
    warnings.simplefilter("ignore")  # sparse CSR is "beta"
    pattern = torch.sparse_csr_tensor(crow, sorted_rows, torch.zeros(order.numel()), (n, 2 * B), check_invariants=False)
    w_sorted = values[order]

    def torch_dec_backward():
        dots = torch.sparse.sampled_addmm(pattern, W_dec, G.t(), beta=0.0).values()
        return dots, F.embedding_bag(sorted_rows, G, crow[:-1], mode="sum", per_sample_weights=w_sorted)

    hot_rows = torch.zeros_like(sorted_rows)
    hot_pattern = torch.sparse_csr_tensor(
        crow, hot_rows, torch.zeros(order.numel()), (n, 2 * B), check_invariants=False
    )
    enc_rows = torch.where(sorted_rows >= B, sorted_rows - B, sorted_rows)
    aux_lat, aux_z = dead[aux_local].contiguous(), aux_vals.relu().contiguous()
    aux_crow = torch.arange(0, B * k_aux + 1, k_aux)

    def check_select(low: bool = False):
        (tv, _), (nv, nc, _) = torch_select(False, low), native_select(False, low)
        full = (P_low + b_low).float() if low else P + b_enc
        return torch.equal(tv.sort(1).values, nv.sort(1).values) and torch.equal(full.gather(1, nc), nv)

    def check_unit():
        a, b = grad_a.clone(), grad_a.clone()
        sq = W_unit.norm(dim=1).square()
        a -= ((a * W_unit).sum(1) / sq).unsqueeze(1) * W_unit
        ops.project_rows(W_unit, b)
        return torch.allclose(a, b, atol=1e-5)

    def check_dec():
        (td, ts), (nd, ns) = torch_dec_backward(), ops.segment_dots_sums(W_dec, G, sorted_rows, order, values, crow)
        return torch.allclose(td, nd[order], atol=1e-3) and torch.allclose(ts, ns, atol=1e-3)

    return [
        ("select", lambda: torch_select(True), lambda: native_select(True), check_select),
        ("select-main", lambda: torch_select(False), lambda: native_select(False), check_select),
        (
            "select-bf16",
            lambda: torch_select(True, True),
            lambda: native_select(True, True),
            lambda: check_select(True),
        ),
        (
            "select-main-bf16",
            lambda: torch_select(False, True),
            lambda: native_select(False, True),
            lambda: check_select(True),
        ),
        (
            "sort",
            lambda: (torch.argsort(latents, stable=True), torch.bincount(latents, minlength=n).cumsum(0)),
            lambda: ops.sort_by_latent(latents, n),
            lambda: torch.equal(ops.sort_by_latent(latents, n)[0], torch.argsort(latents, stable=True)),
        ),
        (
            "dec-backward",
            torch_dec_backward,
            lambda: ops.segment_dots_sums(W_dec, G, sorted_rows, order, values, crow),
            check_dec,
        ),
        (
            "dec-backward-hot",  # every entry reads row 0: the pass's cost with its gathered rows in L1
            lambda: torch.sparse.sampled_addmm(hot_pattern, W_dec, G.t(), beta=0.0),
            lambda: ops.segment_dots_sums(W_dec, G, hot_rows, order, values, crow),
            lambda: True,
        ),
        (
            "enc-sums",
            lambda: F.embedding_bag(enc_rows, x, crow[:-1], mode="sum", per_sample_weights=w_sorted),
            lambda: ops.segment_dots_sums(None, x, enc_rows, order, values, crow, dots=False),
            lambda: True,
        ),
        (
            "decode-aux",
            lambda: F.embedding_bag(aux_lat, W_dec, mode="sum", per_sample_weights=aux_z),
            lambda: ops.gather_sum(W_dec, aux_lat.reshape(-1), aux_z.reshape(-1), aux_crow),
            lambda: torch.allclose(
                F.embedding_bag(aux_lat, W_dec, mode="sum", per_sample_weights=aux_z),
                ops.gather_sum(W_dec, aux_lat.reshape(-1), aux_z.reshape(-1), aux_crow),
                atol=1e-3,
            ),
        ),
        ("unit-project", torch_project, lambda: ops.project_rows(W_unit, grad_b), check_unit),
    ]


def main() -> None:
    """Run every case and print the table (stderr) and, with --json, one record per case (stdout)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="4096x768x16384", help="BxDxN")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--k-aux", type=int, default=384)
    p.add_argument("--dead-fraction", type=float, default=0.3)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    reason = ops.why_unavailable()
    if reason is not None:
        sys.exit(f"the native kernels do not load here: {reason}")
    torch.set_num_threads(a.threads)
    os.environ["SAELAB_SPARSE_THREADS"] = str(a.threads)  # both sides on the same threads, whatever the load
    B, d, n = (int(v) for v in a.shape.split("x"))
    print(f"# {cpu_line()}; torch {torch.__version__}, {a.threads} threads", file=sys.stderr)
    print(
        f"# (B, d, n) = ({B}, {d}, {n}), k {a.k}, k_aux {a.k_aux} of {a.dead_fraction:.0%} dead, reps {a.reps}",
        file=sys.stderr,
    )
    print(f"{'pass':<18}{'torch ms':>10}{'native ms':>11}{'torch/native':>14}", file=sys.stderr)
    for name, torch_fn, native_fn, check in cases(B, d, n, a.k, a.k_aux, a.dead_fraction):
        if not check():
            sys.exit(f"{name}: the native result differs from torch's")
        torch_fn(), native_fn()  # warm-up
        t, nat = [], []
        for _ in range(a.reps):  # interleaved, so drifting load hits both sides alike
            t.append(once(torch_fn))
            nat.append(once(native_fn))
        tm, nm = statistics.median(t), statistics.median(nat)
        print(f"{name:<18}{tm:>10.1f}{nm:>11.1f}{tm / nm:>13.2f}×", file=sys.stderr)
        if a.json:
            rec = {"pass": name, "torch_ms": tm, "native_ms": nm, "ratio": tm / nm, "B": B, "d": d, "n": n}
            rec |= {
                "k": a.k,
                "k_aux": a.k_aux,
                "dead_fraction": a.dead_fraction,
                "threads": a.threads,
                "cpu": cpu_line(),
            }
            print(json.dumps(rec))


if __name__ == "__main__":
    main()
