"""Time the dense-path training step (methods with no exact sparse form) against a plain-PyTorch step.

    .venv/bin/python bench/dense_step.py                          # (128, 1024) batch 2048, 1 thread
    .venv/bin/python bench/dense_step.py --shapes 128x1024,768x4096 --reps 9 --json > r.jsonl

ReLU + L1, ReLU + L1(sqrt) (`lp`, p 0.5), leaky TopK (k 32, ε 0.05) and dimension reduction (p 0.3,
the report's iterative support) train on the dense path:
every [B, n] tensor is materialized. Per method, in one process, every repetition runs each in turn
(so drifting load hits both alike; the table gives medians and the ratio):
  saelab   saelab.training.member.train_step on a member from saelab.training.member.build_member: forward, backward,
           decoder-gradient projection, fused Adam, decoder renormalization, dead-latent bookkeeping
  plain    the same SAE written out as a user would: autograd over (x − b_dec)·W_enc + b_enc, the
           activation, z·W_dec + b_dec, the squared error plus the penalty as its formula (L1(sqrt)
           with torch.where around the zeros, whose pow' is infinite; dimension reduction's support by
           the appendix's iteration with torch.where), torch.optim.Adam (foreach),
           decoder rows renormalized
and, apart, the k-largest selection both use for leaky TopK: saelab.methods.base.topk_mask_values
against torch.topk on the same [B, n] pre-activations.

    .venv/bin/python bench/dense_step.py --relu-density 0.01,0.03,0.1,0.2,0.3

times ReLU + L1 (decoder-norm weighted, the default) on the sparse kernels (every positive
pre-activation, objective.RELU_SPARSE_MAX_DENSITY lifted so the step never falls back) against the
dense path, with b_enc set so each latent fires on that share of the batch: where the ratio crosses 1
is where a ReLU code should leave the sparse path.

    .venv/bin/python bench/dense_step.py --kernels matryoshka_batchtopk,batchtopk --shapes 128x512,128x4096,128x8192

times saelab's step of each named method (k 32, AuxK off, its default parameters) with kernel="sparse"
against kernel="dense", interleaved: what the sparse kernels buy a method that has a sparse plan.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from saelab.config import SAEConfig, TrainConfig
from saelab.methods.base import topk_mask_values
from saelab.methods.dimred import a_sequence
from saelab.training.member import build_member, train_step

METHODS = {
    "relu+l1": {"method": "relu", "penalty": "l1", "alpha": 3.0},
    "relu+l1(sqrt)": {"method": "relu", "penalty": "lp", "penalty_params": {"p": 0.5}, "alpha": 1.0},
    "leaky_topk": {"method": "leaky_topk", "method_params": {"k": 32, "eps": 0.05}},
    "dimred": {"method": "dimred", "method_params": {"p": 0.3}},
}


def plain_step(method: str, d: int, n: int, seed: int):
    """A closure running one plain-PyTorch training step of `method`'s SAE on a batch."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(n, d, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_enc = W_dec.t().clone().requires_grad_()
    W_dec.requires_grad_()
    b_enc, b_dec = torch.zeros(n, requires_grad=True), torch.zeros(d, requires_grad=True)
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=1e-3)
    spec = METHODS[method]

    if method == "dimred":
        a = a_sequence(n, spec["method_params"]["p"], 10)  # 10: DimensionReduction's default p_threshold
        ratio = 1.0 - a[:-1] / a[1:]

    def support(z: torch.Tensor) -> torch.Tensor:
        # The report's S_j / b_j iteration, as written in its appendix, in float64.
        zd, mask = z.detach().double(), torch.ones_like(z, dtype=torch.bool)
        while True:
            k = mask.sum(dim=-1)
            bound = ratio[(k - 1).clamp_min(0)] * torch.where(mask, zd, torch.zeros_like(zd)).sum(dim=-1)
            new = mask & (zd >= bound.unsqueeze(-1))
            if torch.equal(new, mask):
                return mask
            mask = new

    def code(pre: torch.Tensor) -> torch.Tensor:
        z = torch.relu(pre)
        if method == "leaky_topk":
            top = z >= z.topk(32, dim=-1, sorted=False).values.min(dim=-1, keepdim=True).values
            eps = 0.05
        elif method == "dimred":
            top, eps = support(z), 0.01
        else:
            return z
        b = torch.where(top, z, torch.full_like(z, float("inf"))).min(dim=-1, keepdim=True).values
        factor = torch.where(b > 0, eps / b.clamp_min(torch.finfo(z.dtype).tiny), torch.zeros_like(b))
        return torch.where(top, z, factor * z)

    def penalty(z: torch.Tensor) -> torch.Tensor:
        if method == "relu+l1":
            return spec["alpha"] * z.abs().sum(-1).mean()
        if method == "relu+l1(sqrt)":
            mag = z.abs()
            safe = torch.where(mag > 0, mag, torch.ones_like(mag))
            return spec["alpha"] * torch.where(mag > 0, safe.sqrt(), torch.zeros_like(mag)).sum(-1).mean()
        return z.new_zeros(())

    def step(x: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        z = code((x - b_dec) @ W_enc + b_enc)
        x_hat = z @ W_dec + b_dec
        loss = ((x_hat - x) ** 2).sum(-1).mean() + penalty(z)
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))

    return step


def saelab_step(method: str, d: int, n: int, seed: int):
    """A closure running saelab's training step of `method`'s SAE (the trainer's member and step)."""
    cfg = SAEConfig(d_in=d, n_latents=n, kernel="dense", **METHODS[method])
    sample = torch.randn(4096, d, generator=torch.Generator().manual_seed(seed))
    member = build_member(cfg, TrainConfig(activations="bench", out="bench"), sample, seed, Path("bench"))
    return lambda x: train_step(member, x, 1e-3)


def relu_steps(d: int, n: int, density: float, x: torch.Tensor) -> dict:
    """saelab's ReLU+L1 step on the sparse kernels and on the dense path, each latent firing on `density` of x's rows."""
    out = {}
    for kernel in ("sparse", "dense"):
        cfg = SAEConfig(d_in=d, n_latents=n, kernel=kernel, **METHODS["relu+l1"])
        sample = torch.randn(4096, d, generator=torch.Generator().manual_seed(0))
        member = build_member(cfg, TrainConfig(activations="bench", out="bench"), sample, 0, Path("bench"))
        sae = member.sae
        with torch.no_grad():
            xn, _ = sae.normalizer.normalize(x)
            pre = (xn - sae.b_dec) @ sae.W_enc
            sae.b_enc.copy_(-torch.quantile(pre, 1.0 - density, dim=0))
        out[kernel] = (lambda m: lambda xb: train_step(m, xb, 1e-3))(member)
    return out


def kernel_steps(method: str, d: int, n: int) -> dict:
    """saelab's step of `method` (k 32) with kernel="sparse" and with kernel="dense", from the same initial weights."""
    out = {}
    for kernel in ("sparse", "dense"):
        cfg = SAEConfig(d_in=d, n_latents=n, kernel=kernel, method=method, method_params={"k": 32})
        sample = torch.randn(4096, d, generator=torch.Generator().manual_seed(0))
        member = build_member(cfg, TrainConfig(activations="bench", out="bench"), sample, 0, Path("bench"))
        out[kernel] = (lambda m: lambda xb: train_step(m, xb, 1e-3))(member)
    return out


def time_interleaved(fns: dict, x: torch.Tensor, reps: int) -> dict[str, list[float]]:
    """Milliseconds per call of each function, each repetition running every function once in turn."""
    for f in fns.values():
        f(x)  # warm-up: allocator, fused-kernel dispatch
    out = {name: [] for name in fns}
    for _ in range(reps):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f(x)
            out[name].append((time.perf_counter() - t0) * 1e3)
    return out


def sparse_vs_dense(args, say, title: str, cases: list) -> None:
    """Per shape and case (label, record fields, builder of {"sparse", "dense"} steps): time both, print a row and a JSON record."""
    for shape in args.shapes.split(","):
        d, n = (int(v) for v in shape.lower().split("x"))
        x = torch.randn(args.batch, d, generator=torch.Generator().manual_seed(1))
        say(f"\n(d_in, n) = ({d}, {n})  batch {args.batch}  threads {args.threads}  reps {args.reps}: {title}")
        say(f"{'case':22} {'sparse ms':>10} {'dense ms':>10} {'dense / sparse':>15}")
        for label, fields, build in cases:
            times = time_interleaved(build(d, n, x), x, args.reps)
            med = {k: statistics.median(v) for k, v in times.items()}
            say(f"{label:22} {med['sparse']:10.1f} {med['dense']:10.1f} {med['dense'] / med['sparse']:15.2f}")
            if args.json:
                print(
                    json.dumps(
                        {
                            "d_in": d,
                            "n": n,
                            "batch": args.batch,
                            "threads": args.threads,
                            "reps": args.reps,
                            **fields,
                            "sparse_ms": med["sparse"],
                            "dense_ms": med["dense"],
                            "ratio_dense_to_sparse": med["dense"] / med["sparse"],
                            "sparse_min_ms": min(times["sparse"]),
                            "dense_min_ms": min(times["dense"]),
                        }
                    )
                )


def main() -> None:
    """Parse options, time every method and the selection, print a table (and JSON records)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="128x1024", help="comma-separated d_inxN")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--json", action="store_true", help="one JSON record per line on stdout (table on stderr)")
    ap.add_argument(
        "--relu-density", default=None, help="comma-separated code densities: time ReLU+L1 sparse against dense instead"
    )
    ap.add_argument(
        "--kernels",
        default=None,
        help="comma-separated methods: time each on the sparse kernels against the dense path instead",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    say = (lambda s: print(s, file=sys.stderr)) if args.json else print
    if args.kernels:
        cases = [
            (m, {"method": m}, (lambda m: lambda d, n, x: kernel_steps(m, d, n))(m)) for m in args.kernels.split(",")
        ]
        sparse_vs_dense(args, say, "k 32", cases)
        return
    if args.relu_density:
        from saelab.training import objective

        objective.RELU_SPARSE_MAX_DENSITY = float("inf")  # time the sparse path at every density
        cases = [
            (
                f"density {v:.3f}",
                {"method": "relu+l1", "density": v},
                (lambda v: lambda d, n, x: relu_steps(d, n, v, x))(v),
            )
            for v in (float(t) for t in args.relu_density.split(","))
        ]
        sparse_vs_dense(args, say, "ReLU+L1", cases)
        return
    for shape in args.shapes.split(","):
        d, n = (int(v) for v in shape.lower().split("x"))
        x = torch.randn(args.batch, d, generator=torch.Generator().manual_seed(1))
        say(f"\n(d_in, n) = ({d}, {n})  batch {args.batch}  threads {args.threads}  reps {args.reps}")
        say(f"{'method':16} {'saelab ms':>10} {'plain ms':>10} {'plain / saelab':>15}")
        for method in args.methods.split(","):
            times = time_interleaved(
                {"saelab": saelab_step(method, d, n, 0), "plain": plain_step(method, d, n, 0)}, x, args.reps
            )
            med = {k: statistics.median(v) for k, v in times.items()}
            say(f"{method:16} {med['saelab']:10.1f} {med['plain']:10.1f} {med['plain'] / med['saelab']:15.2f}")
            if args.json:
                print(
                    json.dumps(
                        {
                            "d_in": d,
                            "n": n,
                            "batch": args.batch,
                            "threads": args.threads,
                            "reps": args.reps,
                            "method": method,
                            "saelab_ms": med["saelab"],
                            "plain_ms": med["plain"],
                            "ratio_plain_to_saelab": med["plain"] / med["saelab"],
                            "saelab_min_ms": min(times["saelab"]),
                            "plain_min_ms": min(times["plain"]),
                        }
                    )
                )
        pre = torch.randn(args.batch, n, generator=torch.Generator().manual_seed(2))
        sel = time_interleaved(
            {"saelab": lambda p: topk_mask_values(p, 32), "torch": lambda p: torch.topk(p, 32, dim=-1, sorted=False)},
            pre,
            max(args.reps, 15),
        )
        med = {k: statistics.median(v) for k, v in sel.items()}
        say(
            f"{'k-largest (32)':16} {med['saelab']:10.1f} {med['torch']:10.1f} {med['torch'] / med['saelab']:15.2f}   (torch.topk as 'plain')"
        )
        if args.json:
            print(
                json.dumps(
                    {
                        "d_in": d,
                        "n": n,
                        "batch": args.batch,
                        "threads": args.threads,
                        "method": "select k32",
                        "saelab_ms": med["saelab"],
                        "plain_ms": med["torch"],
                        "ratio_plain_to_saelab": med["torch"] / med["saelab"],
                    }
                )
            )


if __name__ == "__main__":
    main()
