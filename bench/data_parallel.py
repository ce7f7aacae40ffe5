"""Tokens/s of `saelab train` in one process vs data-parallel under torchrun (not part of the test suite).

    .venv/bin/python bench/data_parallel.py                       # TopK d=256 n=8192 k=32, batch 2048
    .venv/bin/python bench/data_parallel.py --n-latents 16384 --steps 40 --json

Modes: 1 process × 1 thread, 1 process × P threads, P processes × 1 thread (torchrun, gloo) — on
a CPU-bound box of P cores the last two are the fair comparison — and the latent-sharded run
(`--shard-latents`) on 1 rank (its dense step alone) and on P ranks × 1 thread. Each run trains on toy data
(written once under --work) and reports the tokens/s of its last `--log-every` steps, read back
from metrics.jsonl (so start-up, the first steps' allocation and the final evaluation are excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

PY = Path(sys.executable)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(mode: str, procs: int, threads: int, args, data: Path, sharded: bool = False) -> dict:
    """Train once in `mode`; return its tokens/s over the last logged interval."""
    out = Path(args.work) / f"run-{mode}"
    train = [
        "train",
        "--activations",
        str(data),
        "--method",
        args.method,
        "--k",
        str(args.k),
        "--n-latents",
        str(args.n_latents),
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--log-every",
        str(args.log_every),
        "--out",
        str(out),
        "--overwrite",
        "--no-progress",
        "--threads",
        str(threads),
        "--eval-fraction",
        "0.01",
    ]
    if args.auxk:
        train += ["--auxk", "--dead-tokens", "20000"]
    if sharded:
        train += ["--shard-latents"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if procs == 1:
        cmd = [str(PY), "-m", "saelab", *train]
    else:
        cmd = [
            str(PY.with_name("torchrun")),
            "--nproc-per-node",
            str(procs),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_port()),
            "-m",
            "saelab",
            *train,
        ]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "mode": mode,
        "procs": procs,
        "threads": threads,
        "tokens_per_s": records[-1]["tokens_per_s"],
        "wall_s": round(wall, 1),
        "load_avg": os.getloadavg()[0],
    }


def main() -> None:
    """Run every mode and print one line (or JSON record) each."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/saelab-bench-dp")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--rows", type=int, default=60000)
    p.add_argument("--method", default="topk")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--n-latents", type=int, default=8192)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=30)
    p.add_argument("--auxk", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--only", default="", help="comma-separated modes to run (default: all)")
    args = p.parse_args()
    data_dir = Path(args.work) / "toy"
    if not (data_dir / "activations.npy").exists():
        subprocess.run(
            [
                str(PY),
                "-m",
                "saelab",
                "toy",
                "--out",
                str(data_dir),
                "--d",
                str(args.d),
                "--n-features",
                str(4 * args.d),
                "--n-samples",
                str(args.rows),
                "--mean-active",
                "8",
            ],
            check=True,
            capture_output=True,
        )
    modes = [
        ("1proc-1thread", 1, 1, False),
        (f"1proc-{args.procs}threads", 1, args.procs, False),
        (f"{args.procs}procs-1thread", args.procs, 1, False),
        ("1proc-1thread-sharded", 1, 1, True),
        (f"1proc-{args.procs}threads-sharded", 1, args.procs, True),
        (f"{args.procs}procs-1thread-sharded", args.procs, 1, True),
    ]
    for mode, procs, threads, sharded in modes:
        if args.only and mode not in args.only.split(","):
            continue
        r = run(mode, procs, threads, args, data_dir / "activations.npy", sharded)
        print(
            json.dumps(r)
            if args.json
            else f"{mode:<28} {r['tokens_per_s']:>10.0f} tokens/s  (wall {r['wall_s']} s, load {r['load_avg']:.2f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
