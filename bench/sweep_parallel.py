"""Tokens/s of `saelab sweep` in one process vs two ways of using P processes (not part of the test suite).

    .venv/bin/python bench/sweep_parallel.py                  # both scenarios below
    .venv/bin/python bench/sweep_parallel.py --scenario many --json

Scenarios: "many" — 8 small TopK SAEs on d 128 (1,024 and 2,048 latents × k 8/16/32/64), one seed;
"one" — a single TopK SAE of 16,384 latents on d 256. Modes: 1 process × 1 thread, 1 process × P
threads, P processes × 1 thread data-parallel (every SAE on every rank, B/P rows each), and P
processes × 1 thread spread (`--spread-over-ranks`: each rank trains a share of the SAEs on all B
rows). The sweep's rate is the slowest SAE's tokens/s over its last `--log-every` steps, read from
metrics.jsonl (start-up, evaluation and report excluded): the sweep is done when its slowest SAE is.
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
SCENARIOS = {
    "many": {"d": 128, "sae": '[[sae]]\nmethod = "topk"\nk = [8, 16, 32, 64]\nn_latents = [1024, 2048]\n'},
    "one": {"d": 256, "sae": '[[sae]]\nmethod = "topk"\nk = 32\nn_latents = 16384\n'},
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(work: Path, d: int, rows: int) -> Path:
    out = work / f"toy-d{d}"
    if not (out / "activations.npy").exists():
        subprocess.run(
            [
                str(PY),
                "-m",
                "saelab",
                "toy",
                "--out",
                str(out),
                "--d",
                str(d),
                "--n-features",
                str(4 * d),
                "--n-samples",
                str(rows),
                "--mean-active",
                "8",
            ],
            check=True,
            capture_output=True,
        )
    return out / "activations.npy"


def run(scenario: str, mode: str, procs: int, threads: int, spread: bool, args) -> dict:
    """Run one sweep; return the slowest SAE's tokens/s over its last logged interval."""
    work = Path(args.work)
    spec = SCENARIOS[scenario]
    config = work / f"{scenario}.toml"
    config.write_text(
        f'activations = "{_data(work, spec["d"], args.rows)}"\nsteps = {args.steps}\nbatch_size = {args.batch_size}\n'
        f"log_every = {args.log_every}\neval_fraction = 0.01\n{spec['sae']}"
    )
    out = work / f"{scenario}-{mode}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    sweep = ["sweep", str(config), "--out", str(out), "--no-progress", "--no-report", "--threads", str(threads)]
    sweep += ["--spread-over-ranks"] if spread else []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if procs == 1:
        cmd = [str(PY), "-m", "saelab", *sweep]
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
            *sweep,
        ]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    rates = []
    for line in (out / "results.jsonl").read_text().splitlines():
        records = (out / json.loads(line)["folder"] / "metrics.jsonl").read_text().splitlines()
        rates.append(json.loads(records[-1])["tokens_per_s"])
    return {
        "scenario": scenario,
        "mode": mode,
        "procs": procs,
        "threads": threads,
        "saes": len(rates),
        "tokens_per_s": min(rates),
        "wall_s": round(wall, 1),
        "load_avg": round((load_before + os.getloadavg()[0]) / 2, 2),
    }


def main() -> None:
    """Run every mode of the chosen scenarios and print one line (or JSON record) each."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/saelab-bench-sweep")
    p.add_argument("--scenario", choices=(*SCENARIOS, "both"), default="both")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=30)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    n = args.procs
    modes = [
        ("1proc-1thread", 1, 1, False),
        (f"1proc-{n}threads", 1, n, False),
        (f"{n}procs-data-parallel", n, 1, False),
        (f"{n}procs-spread", n, 1, True),
    ]
    for scenario in SCENARIOS if args.scenario == "both" else [args.scenario]:
        base = None
        for mode, procs, threads, spread in modes:
            r = run(scenario, mode, procs, threads, spread, args)
            base = base or r["tokens_per_s"]
            r["vs_1proc_1thread"] = round(r["tokens_per_s"] / base, 2)
            print(
                json.dumps(r)
                if args.json
                else f"{scenario:<5} {mode:<22} {r['tokens_per_s']:>9.0f} tokens/s  ×{r['vs_1proc_1thread']:<5} "
                f"(wall {r['wall_s']} s, load {r['load_avg']:.2f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
