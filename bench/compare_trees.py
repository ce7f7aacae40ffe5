"""Time the training step of two source trees (two commits' worktrees) in alternating processes, side by side.

    git worktree add /tmp/base 13586e1
    .venv/bin/python bench/compare_trees.py /tmp/base . --runs 3 --auxk on

Each run is one `bench/train_step.py` process from that tree (its own `src` first on PYTHONPATH, so
its own native kernels are built and loaded), timing the floors and saelab's steps back to back for
`--reps` repetitions; runs alternate between the trees so that a shared machine's load hits both
alike. Printed per run: each step's paired ratio to its floor (the median of per-repetition ratios)
and its median milliseconds. One process cannot hold two builds of the native library, hence processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

IMPLS = "floor,floor-bf16,saelab-sparse,saelab-sparse-bf16"
FLOOR = {"saelab-sparse": "floor", "saelab-sparse-bf16": "floor-bf16"}


def one_run(tree: Path, args: argparse.Namespace) -> list[dict]:
    """The JSON records of one train_step.py process run from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "SAELAB_SPARSE_THREADS": str(args.threads)}
    cmd = [sys.executable, str(tree / "bench" / "train_step.py"), "--shapes", args.shape, "--auxk", args.auxk]
    cmd += ["--reps", str(args.reps), "--impls", IMPLS, "--peers", "none", "--no-rss", "--json"]
    cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def main() -> None:
    """Alternate the trees and print one line per run and AuxK setting."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trees", nargs=2, type=Path, help="the base tree, then the tree under test")
    p.add_argument("--runs", type=int, default=3, help="processes per tree")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--auxk", choices=["off", "on", "both"], default="both")
    p.add_argument("--shape", default="768x16384x32")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    for _ in range(a.runs):
        for tree in a.trees:
            records = one_run(tree, a)
            for aux in sorted({r["auxk"] for r in records}):
                by = {r["impl"]: r["times_ms"] for r in records if r["auxk"] == aux}
                parts = [
                    f"{impl} {statistics.median(t / f for t, f in zip(by[impl], by[base])):.3f}× floor"
                    f" ({statistics.median(by[impl]):.0f} ms)"
                    for impl, base in FLOOR.items()
                ]
                print(f"{str(tree):<20} AuxK {'on ' if aux else 'off'}  " + "  ".join(parts), flush=True)


if __name__ == "__main__":
    main()
