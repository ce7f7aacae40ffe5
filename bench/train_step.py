"""Time one SAE training step against the floor (the encoder's forward product alone) and the peers.

    .venv/bin/python bench/train_step.py                 # all shapes, AuxK off and on, peers found
    .venv/bin/python bench/train_step.py --quick         # (768, 16384, 32) only, 3 reps, no AuxK
    .venv/bin/python bench/train_step.py --json > r.jsonl

Implementations, all fp32 on `--threads` CPU threads, batch `--batch`:
  floor                x @ W_enc alone: the one dense product a TopK step cannot avoid
  saelab-sparse        saelab.training.member.train_step with kernel="sparse": forward + backward, decoder-gradient
                       projection, fused Adam (built by saelab.training.member.build_member, as the Trainer
                       builds it), renormalization, dead-latent bookkeeping
  saelab-dense         the same with kernel="dense" (the reference path)
  floor-bf16           x @ W_enc in bfloat16 (operands cast beforehand, untimed): the floor of a
                       bfloat16-autocast step on a CPU with bfloat16 units
  floor-buffer, floor-bf16-buffer
                       the same products written into an output allocated once (torch.mm(out=)):
                       without the fresh output's page faults, which saelab's step avoids by
                       reusing its buffer; ask for them with --impls
  saelab-sparse-bf16   saelab-sparse with TrainConfig.dtype="bfloat16" (`--dtype bfloat16`): the
                       sparse kernels under autocast, weights and Adam float32
  saelab-dense-bf16    saelab-dense with dtype="bfloat16" (autocast over the dense reference path)
  saelab-lean          saelab-sparse with lean_memory (Adam steps each parameter inside backward, no
                       buffers kept between steps, smaller pre-activation chunks): not in the default
                       list, ask for it with --impls
  torch-topk           a plain-PyTorch dense TopK SAE step written here, as a user would
  saelens / sparsify / dictlearn
                       the library's own step, in its own venv, driven through bench/peers.py
  sparsify-bf16        sparsify's step with its forward and loss under bfloat16 autocast
Every repetition runs every implementation once, in turn (peers as long-lived subprocesses that
step on request), so drifting load on a shared machine hits all of them alike; the table gives
medians. With AuxK on, `--dead-fraction` of the latents are marked dead before every step
(untimed) and k_aux = d_in // 2 for everyone, the peers' own choice. paired_ratio_to_floor(_bf16)
is the median of the per-repetition ratios, steadier than a ratio of medians when the load shifts
within a run. peak_rss_mb is the peak
resident memory of a process that builds only that implementation and runs one step.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from peers import peak_rss_mb, status_mb  # bench/ is on sys.path: both scripts run as `python bench/<script>.py`

REPO = Path(__file__).resolve().parent.parent
SHAPES = [(512, 4096, 32), (768, 16384, 32), (768, 32768, 64)]
IMPLS = ["floor", "saelab-sparse", "saelab-dense", "torch-topk"]
PEERS = {"saelens": ".venv-saelens", "sparsify": ".venv-sparsify", "dictlearn": ".venv-dictlearn"}
# Peers timed under bfloat16 autocast: name → the library (its venv's key in PEERS).
BF16_PEERS = {"sparsify-bf16": "sparsify"}
DEAD_TOKENS = 10_000_000


@dataclass
class Setup:
    """One benchmark case."""

    d: int
    n: int
    k: int
    batch: int
    dead_fraction: float  # 0 = AuxK off
    seed: int = 0
    x: torch.Tensor = field(init=False)
    dead: torch.Tensor | None = field(init=False)

    def __post_init__(self):
        g = torch.Generator().manual_seed(self.seed + 1)
        self.dead = torch.rand(self.n, generator=g) < self.dead_fraction if self.dead_fraction > 0 else None
        self.x = torch.randn(self.batch, self.d, generator=g)

    @property
    def auxk(self) -> bool:
        """Whether AuxK is active."""
        return self.dead is not None


# ---- in-process implementations ---------------------------------------------------------------
def build_floor(s: Setup, buffer: bool = False) -> Callable[[], None]:
    """x @ W_enc alone (with `buffer`, into an output allocated once)."""
    return _product(s.x, torch.randn(s.d, s.n) / s.d**0.5, buffer)


def build_floor_bf16(s: Setup, buffer: bool = False) -> Callable[[], None]:
    """x @ W_enc in bfloat16, its operands rounded once outside the timed call (with `buffer`, into an output allocated once)."""
    return _product(s.x.bfloat16(), (torch.randn(s.d, s.n) / s.d**0.5).bfloat16(), buffer)


def _product(x: torch.Tensor, W: torch.Tensor, buffer: bool) -> Callable[[], None]:
    out = torch.empty(x.shape[0], W.shape[1], dtype=W.dtype) if buffer else None

    def step():
        return x @ W if out is None else torch.mm(x, W, out=out)

    return step


def build_saelab(s: Setup, kernel: str, lean: bool = False, dtype: str = "float32") -> Callable[[], None]:
    """saelab.training.member.train_step on one member built by saelab.training.member.build_member (as the Trainer builds them)."""
    from saelab.config import SAEConfig, TrainConfig
    from saelab.training.member import build_member, train_step

    cfg = SAEConfig(
        n_latents=s.n,
        method="topk",
        method_params={"k": s.k},
        d_in=s.d,
        kernel=kernel,
        b_dec_init="mean",
        auxk=s.auxk,
        k_aux=s.d // 2,
        dead_tokens=DEAD_TOKENS,
    )
    member = build_member(
        cfg, TrainConfig(activations="-", out="-", lean_memory=lean, dtype=dtype), s.x, s.seed, Path("-")
    )

    def step():
        if s.dead is not None:  # impose the dead share (the bookkeeping itself stays in the step)
            member.tracker.since_fired.copy_(torch.where(s.dead, DEAD_TOKENS, 0))
        train_step(member, s.x, member.base_lr)

    step.member = member  # for --profile
    return step


def build_torch_topk(s: Setup) -> Callable[[], None]:
    """A plain-PyTorch dense TopK SAE step (scaling-paper recipe), default Adam."""
    g = torch.Generator().manual_seed(s.seed)
    W_dec = torch.randn(s.n, s.d, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    params = {"W_enc": W_dec.t().clone(), "b_enc": torch.zeros(s.n), "W_dec": W_dec, "b_dec": s.x.mean(0)}
    params = {k: torch.nn.Parameter(v) for k, v in params.items()}
    opt = torch.optim.Adam(params.values(), lr=2e-4 / (s.n / 2**14) ** 0.5)
    since_fired = torch.zeros(s.n, dtype=torch.long)
    k_aux = s.d // 2

    def step():
        W_enc, b_enc, W_dec, b_dec = params["W_enc"], params["b_enc"], params["W_dec"], params["b_dec"]
        x = s.x
        pre = (x - b_dec) @ W_enc + b_enc
        vals, idx = pre.topk(s.k, dim=-1, sorted=False)
        z = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
        x_hat = z @ W_dec + b_dec
        loss = (x_hat - x).pow(2).sum(-1).mean()
        dead = s.dead
        if dead is not None and bool(dead.any()):
            ka = min(k_aux, int(dead.sum()))
            av, ai = pre.masked_fill(~dead, float("-inf")).topk(ka, dim=-1, sorted=False)
            e_hat = torch.zeros_like(pre).scatter(-1, ai, torch.relu(av)) @ W_dec
            e = (x - x_hat).detach()
            loss = loss + (e_hat - e).pow(2).sum(-1).mean() / (e - e.mean(0)).pow(2).sum(-1).mean() / 32
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            unit = W_dec / W_dec.norm(dim=1, keepdim=True)
            W_dec.grad -= (W_dec.grad * unit).sum(1, keepdim=True) * unit
        opt.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=1, keepdim=True)
            since_fired.add_(x.shape[0])
            since_fired[(z > 0).any(0)] = 0

    return step


def build(impl: str, s: Setup) -> Callable[[], None]:
    """The step function of an in-process implementation."""
    if impl == "floor":
        return build_floor(s)
    if impl == "floor-bf16":
        return build_floor_bf16(s)
    if impl == "floor-buffer":
        return build_floor(s, buffer=True)
    if impl == "floor-bf16-buffer":
        return build_floor_bf16(s, buffer=True)
    if impl == "saelab-sparse":
        return build_saelab(s, "sparse")
    if impl == "saelab-sparse-bf16":
        return build_saelab(s, "sparse", dtype="bfloat16")
    if impl == "saelab-dense-bf16":
        return build_saelab(s, "dense", dtype="bfloat16")
    if impl == "saelab-dense":
        return build_saelab(s, "dense")
    if impl == "saelab-lean":
        return build_saelab(s, "sparse", lean=True)
    if impl == "torch-topk":
        return build_torch_topk(s)
    raise ValueError(impl)


# ---- peers ------------------------------------------------------------------------------------
class Peer:
    """A peer library's step, served by bench/peers.py in that library's venv."""

    def __init__(self, name: str, s: Setup, threads: int):
        lib = BF16_PEERS.get(name, name)
        python = REPO / PEERS[lib] / "bin" / "python"
        cmd = [
            str(python),
            str(REPO / "bench" / "peers.py"),
            "--lib",
            lib,
            "--d-in",
            str(s.d),
            "--n",
            str(s.n),
            "--k",
            str(s.k),
            "--batch",
            str(s.batch),
            "--threads",
            str(threads),
            "--dead-fraction",
            str(s.dead_fraction),
            "--seed",
            str(s.seed),
            "--serve",
        ]
        if name in BF16_PEERS:
            cmd += ["--autocast", "bfloat16"]
        self.lib = lib
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.version = self._read().get("version")

    def _read(self) -> dict:
        while True:  # libraries print notices of their own on stdout; replies are JSON objects
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.lib}: the peer process ended (rc={self.proc.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def step_ms(self) -> float:
        """Run one step in the peer; its own timing of it."""
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self._read()["ms"]

    def close(self) -> float:
        """Stop the peer; its peak RSS in MiB."""
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        rss = self._read()["peak_rss_mb"]
        self.proc.wait()
        return rss


def available_peers() -> list[str]:
    """Peers whose venv exists."""
    return [lib for lib, venv in PEERS.items() if (REPO / venv / "bin" / "python").exists()]


def is_peer(name: str) -> bool:
    """Whether `name` is timed in a peer library's venv."""
    return name in PEERS or name in BF16_PEERS


# ---- measurement --------------------------------------------------------------------------------


def child_peak_rss(impl: str, s: Setup, threads: int) -> dict | None:
    """{"peak": peak RSS, "base": RSS before building} (MiB) of a fresh process that builds `impl` and runs one step."""
    cmd = [
        sys.executable,
        __file__,
        "--rss-child",
        impl,
        "--shapes",
        f"{s.d}x{s.n}x{s.k}",
        "--batch",
        str(s.batch),
        "--threads",
        str(threads),
        "--dead-fraction",
        str(s.dead_fraction),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def state_mb(s: Setup, grads: bool) -> float:
    """What a training step must hold (MiB): weights, Adam's two moments, one fp32 batch (and the gradients)."""
    params = 2 * s.n * s.d + s.n + s.d
    copies = 3 + (1 if grads else 0)
    return (copies * params + s.batch * s.d) * 4 / 2**20


def run_case(s: Setup, impls: list[str], peers: list[str], reps: int, threads: int, rss: bool) -> list[dict]:
    """Interleaved timing of every implementation on one case; one record per implementation."""
    running: dict[str, Peer] = {}
    for lib in peers:
        try:
            running[lib] = Peer(lib, s, threads)
        except Exception as e:  # a peer that cannot run is reported, not fatal
            print(f"# {lib}: not timed ({e})", file=sys.stderr)
    steps = {impl: build(impl, s) for impl in impls}
    for fn in steps.values():
        fn()  # warm-up: optimizer state, scratch buffers
    times: dict[str, list[float]] = {name: [] for name in [*steps, *running]}
    for _ in range(reps):
        for impl, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[impl].append((time.perf_counter() - t0) * 1e3)
        for lib, peer in running.items():
            times[lib].append(peer.step_ms())
    peer_rss = {lib: peer.close() for lib, peer in running.items()}
    versions = {lib: peer.version for lib, peer in running.items()}
    del steps
    gc.collect()
    floor = statistics.median(times["floor"]) if "floor" in times else None
    floor_bf16 = statistics.median(times["floor-bf16"]) if "floor-bf16" in times else None
    records = []
    for name, ts in times.items():
        ms = statistics.median(ts)
        child = None if name in running or not rss else child_peak_rss(name, s, threads)
        peak = peer_rss.get(name) if name in running else (child["peak"] if child else None)
        rec = {
            "d_in": s.d,
            "n": s.n,
            "k": s.k,
            "impl": name,
            "ms_per_step": round(ms, 1),
            "ratio_to_floor": round(ms / floor, 3) if floor else None,
            "peak_rss_mb": round(peak) if peak else None,
            "auxk": s.auxk,
            "dead_fraction": s.dead_fraction,
            "batch": s.batch,
            "threads": threads,
            "reps": reps,
            "min_ms": round(min(ts), 1),
            "max_ms": round(max(ts), 1),
            "times_ms": [round(t, 1) for t in ts],
        }
        if floor_bf16:
            rec["ratio_to_floor_bf16"] = round(ms / floor_bf16, 3)
        # The median of the per-repetition ratios: each repetition times every implementation back to
        # back, so a slow spell of a shared machine cancels within a repetition instead of moving one median.
        for key, base in (
            ("paired_ratio_to_floor", "floor"),
            ("paired_ratio_to_floor_bf16", "floor-bf16"),
            ("paired_ratio_to_floor_buffer", "floor-buffer"),
            ("paired_ratio_to_floor_bf16_buffer", "floor-bf16-buffer"),
        ):
            if base in times and len(times[base]) == len(ts):
                rec[key] = round(statistics.median(t / b for t, b in zip(ts, times[base])), 3)
        if name in versions:
            rec["version"] = versions[name]
        if child and not name.startswith("floor"):
            # Memory the step added beyond the process it runs in, against what it must hold.
            added = child["peak"] - child["base"]
            rec.update(
                base_rss_mb=round(child["base"]),
                state_mb=round(state_mb(s, grads=False)),
                memory_ratio=round(added / state_mb(s, grads=False), 3),
                memory_ratio_with_grads=round(added / state_mb(s, grads=True), 3),
            )
        records.append(rec)
    return records


def print_table(records: list[dict], out) -> None:
    """Human-readable table of one case, with the speed-ups the targets are stated in."""
    r0 = records[0]
    print(
        f"\n(d_in, n, k) = ({r0['d_in']}, {r0['n']}, {r0['k']})  batch {r0['batch']}  AuxK "
        f"{'on, ' + format(r0['dead_fraction'], '.0%') + ' dead' if r0['auxk'] else 'off'}  threads {r0['threads']}  reps {r0['reps']}",
        file=out,
    )
    print(
        f"{'impl':<20}{'ms/step':>10}{'× floor':>9}{'× bf16 fl':>10}{'min':>9}{'max':>9}{'peak RSS MB':>13}{'mem ×':>7}{'+grads':>8}"
        f"{'paired × fl':>13}{'paired bf16':>12}",
        file=out,
    )
    for r in records:
        rss = "" if r["peak_rss_mb"] is None else str(r["peak_rss_mb"])
        ratio = "" if r["ratio_to_floor"] is None else f"{r['ratio_to_floor']:.2f}"
        ratio_bf16 = f"{r['ratio_to_floor_bf16']:.2f}" if "ratio_to_floor_bf16" in r else ""
        mem = f"{r['memory_ratio']:.2f}" if "memory_ratio" in r else ""
        mem_g = f"{r['memory_ratio_with_grads']:.2f}" if "memory_ratio_with_grads" in r else ""
        paired = f"{r['paired_ratio_to_floor']:.2f}" if "paired_ratio_to_floor" in r else ""
        paired_bf16 = f"{r['paired_ratio_to_floor_bf16']:.2f}" if "paired_ratio_to_floor_bf16" in r else ""
        print(
            f"{r['impl']:<20}{r['ms_per_step']:>10.1f}{ratio:>9}{ratio_bf16:>10}{r['min_ms']:>9.1f}{r['max_ms']:>9.1f}{rss:>13}{mem:>7}{mem_g:>8}"
            f"{paired:>13}{paired_bf16:>12}",
            file=out,
        )
    print("paired: the median over repetitions of each repetition's ratio (implementations run back to back)", file=out)
    if any("memory_ratio" in r for r in records):
        print(
            f"mem ×: (peak RSS − RSS before building) / (weights + Adam state + one batch = {next(r['state_mb'] for r in records if 'state_mb' in r)} MB);"
            " +grads: the same with the gradients in the denominator",
            file=out,
        )
    by = {r["impl"]: r["ms_per_step"] for r in records}
    if "saelab-sparse-bf16" in by and "saelab-sparse" in by:
        print(
            f"saelab-sparse-bf16: {by['saelab-sparse'] / by['saelab-sparse-bf16']:.2f}× faster than saelab-sparse (float32)",
            file=out,
        )
    if "sparsify-bf16" in by and "saelab-sparse-bf16" in by:
        print(
            f"saelab-sparse-bf16: {by['sparsify-bf16'] / by['saelab-sparse-bf16']:.2f}× faster than sparsify-bf16",
            file=out,
        )
    peers = {p: by[p] for p in PEERS if p in by}
    for ours in ("saelab-sparse",):
        if ours in by and peers:
            fastest = min(peers, key=peers.get)
            line = f"{ours}: {peers[fastest] / by[ours]:.2f}× faster than the fastest peer ({fastest})"
            if "saelens" in peers:
                line += f", {peers['saelens'] / by[ours]:.2f}× faster than SAELens"
            print(line, file=out)


def profile(s: Setup, threads: int, reps: int) -> None:
    """Where a saelab-sparse step's time goes, next to the floor: phase timers around the same
    calls saelab.training.member.train_step makes, the top operators, and Adam's three CPU implementations."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from saelab.training.objective import compute_step, fired_latents, nonzero_values

    floor = build_floor(s)
    step = build_saelab(s, "sparse")
    step()
    member = step.member
    sae, opt = member.sae, member.optimizer
    phases: dict[str, list[float]] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        phases.setdefault(name, []).append((time.perf_counter() - t0) * 1e3)
        return out

    for _ in range(reps):
        timed("floor: x @ W_enc", floor)
        dead = member.tracker.dead_mask() if member.cfg.auxk else None
        out = timed("forward (compute_step)", lambda: compute_step(sae, s.x, 0.0, dead))
        timed("zero_grad", lambda: opt.zero_grad(set_to_none=True))
        timed("backward", lambda: out.total.backward())
        timed("project decoder grad", sae.project_decoder_grad)
        timed("Adam step (fused)", opt.step)
        timed("normalize decoder", sae.normalize_decoder)
        timed(
            "bookkeeping",
            lambda: (
                sae.activation.observe(nonzero_values(out.z).detach()),
                member.tracker.update(fired_latents(out.z, s.n), s.batch),
            ),
        )
    print(f"\nphases of one saelab-sparse step (median of {reps}), ({s.d}, {s.n}, {s.k}) batch {s.batch} AuxK {s.auxk}")
    for name, ts in phases.items():
        print(f"  {name:<26}{statistics.median(ts):>9.1f} ms")
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
    params = [torch.nn.Parameter(p.detach().clone()) for p in sae.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    for label, kw in (
        ("for-loop (CPU default)", {"foreach": False}),
        ("foreach", {"foreach": True}),
        ("fused", {"fused": True}),
    ):
        adam = torch.optim.Adam(params, lr=1e-4, **kw)
        adam.step()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            adam.step()
            ts.append((time.perf_counter() - t0) * 1e3)
        print(
            f"  Adam {label:<24}{statistics.median(ts):>9.1f} ms over {sum(p.numel() for p in params) / 1e6:.1f}M parameters"
        )


def main() -> None:
    """Parse options, run every case, print the table (and JSON records with --json)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(f"{d}x{n}x{k}" for d, n, k in SHAPES), help="comma-separated d_inxNxK")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="768x16384x32 only, 3 reps, AuxK off, no peers, no RSS")
    p.add_argument("--json", action="store_true", help="one JSON record per line on stdout (table on stderr)")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--auxk", choices=["off", "on", "both"], default="both")
    p.add_argument("--dead-fraction", type=float, default=0.3, help="share of latents dead when AuxK is on")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--peers", default="found", help="comma-separated, 'found' (venvs present) or 'none'")
    p.add_argument("--no-rss", action="store_true", help="skip the per-implementation peak-RSS child processes")
    p.add_argument(
        "--profile", action="store_true", help="phase timers and top operators of a saelab-sparse step, per shape"
    )
    p.add_argument("--rss-only", action="store_true", help="peak RSS per implementation only (no timing)")
    p.add_argument("--rss-child", help=argparse.SUPPRESS)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    if a.rss_child:
        d, n, k = shapes[0]
        import saelab.training.trainer  # noqa: F401  (imported before the baseline, as a user's process would have it)

        base = status_mb("VmRSS")
        fn = build(a.rss_child, Setup(d, n, k, a.batch, a.dead_fraction))
        fn()  # the first step allocates everything a step needs, optimizer state included
        fn()  # the second reuses what the first allocated (scratch, gradient buffers), or shows it does not
        print(json.dumps({"peak": peak_rss_mb(), "base": base}))
        return
    if a.profile:
        for d, n, k in shapes:
            profile(Setup(d, n, k, a.batch, a.dead_fraction if a.auxk == "on" else 0.0), a.threads, a.reps)
        return
    reps, auxk, rss = a.reps, a.auxk, not a.no_rss
    peers = available_peers() if a.peers == "found" else ([] if a.peers == "none" else a.peers.split(","))
    if a.quick:
        shapes, reps, auxk, rss = [(768, 16384, 32)], min(reps, 3), "off", False
        peers = [] if a.peers == "found" else peers
    impls = a.impls.split(",")
    out = sys.stderr if a.json else sys.stdout
    print(
        f"# torch {torch.__version__}, {a.threads} threads, {os.cpu_count()} CPUs; peers: {', '.join(peers) or 'none'}",
        file=out,
    )
    fractions = {"off": [0.0], "on": [a.dead_fraction], "both": [0.0, a.dead_fraction]}[auxk]
    if a.rss_only:
        for d, n, k in shapes:
            for frac in fractions:
                s = Setup(d, n, k, a.batch, frac)
                for impl in impls:
                    child = child_peak_rss(impl, s, a.threads)
                    rec = {
                        "d_in": d,
                        "n": n,
                        "k": k,
                        "impl": impl,
                        "auxk": s.auxk,
                        "peak_rss_mb": child and round(child["peak"]),
                        "base_rss_mb": child and round(child["base"]),
                    }
                    if child and not impl.startswith("floor"):
                        rec["memory_ratio"] = round((child["peak"] - child["base"]) / state_mb(s, grads=False), 3)
                        rec["memory_ratio_with_grads"] = round(
                            (child["peak"] - child["base"]) / state_mb(s, grads=True), 3
                        )
                    print(json.dumps(rec), flush=True)
                for lib in peers:
                    cmd = [
                        str(REPO / PEERS[lib] / "bin" / "python"),
                        str(REPO / "bench" / "peers.py"),
                        "--lib",
                        lib,
                        "--d-in",
                        str(d),
                        "--n",
                        str(n),
                        "--k",
                        str(k),
                        "--batch",
                        str(a.batch),
                        "--threads",
                        str(a.threads),
                        "--dead-fraction",
                        str(frac),
                        "--reps",
                        "1",
                    ]
                    out = subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()
                    rec = json.loads(out[-1]) if out and out[-1].startswith("{") else {"impl": lib, "peak_rss_mb": None}
                    print(
                        json.dumps(
                            {"d_in": d, "n": n, "k": k, "impl": lib, "auxk": s.auxk, "peak_rss_mb": rec["peak_rss_mb"]}
                        ),
                        flush=True,
                    )
        return
    for d, n, k in shapes:
        for frac in fractions:
            records = run_case(Setup(d, n, k, a.batch, frac), impls, peers, reps, a.threads, rss)
            print_table(records, out)
            out.flush()
            if a.json:
                for r in records:
                    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
