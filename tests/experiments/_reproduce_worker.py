"""The torchrun side of tests/experiments/test_reproduce_spread.py: `torchrun --nproc-per-node 2 _reproduce_worker.py NAME OUT`.

Runs one paper's reproduction at the tiny budget below; under torchrun its sweeps are spread over the ranks.
"""

from __future__ import annotations

import dataclasses
import sys

from saelab.experiments.reproduce.budget import QUICK
from saelab.experiments.reproduce.run import run_reproduce

# Small enough for two launches in the slow profile; two seeds, so the claims still have intervals.
TINY = dataclasses.replace(
    QUICK,
    name="tiny",
    train_games=60,
    eval_games=40,
    n_latents=64,
    target_l0=8,
    steps=20,
    batch_size=256,
    seeds=2,
    sizes=(16, 32, 64),
    n_boot=20,
)

if __name__ == "__main__":
    got = run_reproduce(sys.argv[1], TINY, out=sys.argv[2], say=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"claims: {len(got)}", flush=True)
