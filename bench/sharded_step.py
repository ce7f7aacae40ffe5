"""Per-rank peak memory and step time of a latent-sharded SAE against the one-process step (not part of the test suite).

    .venv/bin/python bench/sharded_step.py                           # (768, 65536, 64), batch 4096, 2 ranks
    .venv/bin/python bench/sharded_step.py --shape 768x16384x32 --auxk --json

Two runs, each in fresh processes so every peak is its own:
  one      saelab.training.member.train_step on the whole SAE (build_member, as the Trainer builds it), one
           process with --ranks threads;
  sharded  `torchrun --nproc-per-node R` of this script: each rank (1 thread) builds only its shard
           (ShardedSAE.initialize_from_data, never the whole dictionary) and runs
           saelab.training.sharded.step.sharded_train_step, the step `saelab train --shard-latents` runs.
Both use the sparse kernels, the same random batches, and with --auxk a fixed 30 % of the latents
marked dead. Reported per process: peak RSS (VmHWM, MiB), the state it must hold (weights, Adam's
two moments and one gradient of its latents, MiB), and the median ms/step after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from peers import peak_rss_mb  # bench/ is on sys.path: the script runs as `python bench/sharded_step.py`

DEAD_FRACTION = 0.3
DEAD_TOKENS = 10_000_000


def _cfg(d: int, n: int, k: int, auxk: bool):
    from saelab.config import SAEConfig

    return SAEConfig(
        n_latents=n,
        method="topk",
        method_params={"k": k},
        auxk=auxk,
        k_aux=d // 2,
        dead_tokens=DEAD_TOKENS,
        kernel="sparse",
        d_in=d,
    )


def _batches(d: int, batch: int, steps: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(batch, d, generator=gen) for _ in range(steps)]


def _mark_dead(tracker, lo: int, n_total: int) -> None:
    """The same 30 % of the latents dead in every run (latent j is dead when j·0.3 crosses an integer)."""
    ids = torch.arange(lo, lo + tracker.since_fired.numel())
    dead = (ids * DEAD_FRACTION).floor() != ((ids + 1) * DEAD_FRACTION).floor()
    tracker.since_fired.copy_(torch.where(dead, DEAD_TOKENS, 0))


def _time_steps(step, batches: list[torch.Tensor], reset) -> float:
    times = []
    for i, x in enumerate(batches):
        reset()
        start = time.perf_counter()
        step(x)
        if i:  # the first step allocates the workspace
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def run_one(args) -> dict:
    """The whole SAE in this process."""
    from saelab.config import TrainConfig
    from saelab.training.member import build_member, train_step

    torch.set_num_threads(args.ranks)
    d, n, k = args.d, args.n, args.k
    cfg = _cfg(d, n, k, args.auxk)
    m = build_member(cfg, TrainConfig(activations="-", out="-"), torch.randn(4096, d), 0, Path("."))
    batches = _batches(d, args.batch, args.steps + 1)
    ms = _time_steps(
        lambda x: train_step(m, x, 1e-4), batches, lambda: _mark_dead(m.tracker, 0, n) if args.auxk else None
    )
    return {
        "mode": "one",
        "rank": 0,
        "ranks": 1,
        "threads": args.ranks,
        "ms_per_step": round(ms, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "state_mb": round(4 * 4 * 2 * n * d / 2**20, 1),
    }


def run_rank(args) -> dict:
    """This rank's shard (under torchrun)."""
    from saelab.config import TrainConfig
    from saelab.training.sharded.model import ShardedSAE
    from saelab.training.sharded.step import sharded_member, sharded_train_step
    from saelab.util import distributed

    torch.set_num_threads(1)
    world = distributed.init_from_env()
    d, n, k = args.d, args.n, args.k
    shard = ShardedSAE(_cfg(d, n, k, args.auxk), world)
    shard.initialize_from_data(torch.randn(4096, d, generator=torch.Generator().manual_seed(1)), 0)
    shard.train()
    m = sharded_member(shard, TrainConfig(activations="-", out="-"))
    batches = _batches(d, args.batch, args.steps + 1)
    ms = _time_steps(
        lambda x: sharded_train_step(m, x, 1e-4),
        batches,
        lambda: _mark_dead(m.tracker, shard.lo, n) if args.auxk else None,
    )
    record = {
        "mode": "sharded",
        "rank": world.rank,
        "ranks": world.size,
        "threads": 1,
        "ms_per_step": round(ms, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "state_mb": round(4 * 4 * 2 * shard.n_local * d / 2**20, 1),
    }
    records = world.all_gather(record)
    distributed.shutdown()
    return records if world.rank == 0 else None


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    """Run both modes in fresh processes and print one line (or JSON record) per process."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="768x65536x64", help="d x n_latents x k")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--auxk", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", choices=["one", "rank"], help=argparse.SUPPRESS)
    args = p.parse_args()
    args.d, args.n, args.k = (int(v) for v in args.shape.split("x"))
    if args.worker == "one":
        print(json.dumps([run_one(args)]))
        return
    if args.worker == "rank":
        out = run_rank(args)
        if out is not None:
            print(json.dumps(out))
        return
    here = Path(__file__).resolve()
    common = [
        str(here),
        "--shape",
        args.shape,
        "--batch",
        str(args.batch),
        "--ranks",
        str(args.ranks),
        "--steps",
        str(args.steps),
    ]
    common += ["--auxk"] if args.auxk else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        [sys.executable, *common, "--worker", "one"],
        [
            str(Path(sys.executable).with_name("torchrun")),
            "--nproc-per-node",
            str(args.ranks),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_port()),
            *common,
            "--worker",
            "rank",
        ],
    ]
    for cmd in runs:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        for r in json.loads(done.stdout.strip().splitlines()[-1]):
            r.update(
                {"shape": args.shape, "batch": args.batch, "auxk": args.auxk, "load_avg": round(os.getloadavg()[0], 2)}
            )
            print(
                json.dumps(r)
                if args.json
                else f"{r['mode']:<8} rank {r['rank']}/{r['ranks']} × {r['threads']} thread(s): {r['ms_per_step']:>8.1f} ms/step  "
                f"peak RSS {r['peak_rss_mb']:>8.1f} MiB  state {r['state_mb']:>7.1f} MiB",
                flush=True,
            )


if __name__ == "__main__":
    main()
