"""The 1-d probe fit, today's against the previous one (tests/features/test_features_probe1d.py::_plain_fit), side by side.

    .venv/bin/python bench/probe_fit.py --latents 512 --games 300 --tasks 6

Both fit the same Othello tasks (square:state labels of held-out games) on the same codes of a
random TopK SAE (k 32) over OthelloGPT layer 3; each task runs the two fits back to back, so load
drift hits both alike. Prints one JSON line: seconds of each, the ratio, and the largest gaps in J,
w and b between the two fits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # the features tests import tests/ helpers
sys.path.insert(0, str(ROOT / "tests" / "features"))  # the plain fit the tests check against


def main() -> int:
    """Fit --tasks tasks both ways and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latents", type=int, default=512)
    ap.add_argument("--games", type=int, default=300)
    ap.add_argument("--tasks", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from test_features_probe1d import _plain_fit

    from saelab.config import SAEConfig
    from saelab.features.probe1d import SparseCodes, fit_probes
    from saelab.model.sae import SparseAutoencoder
    from saelab.sources.othello.harvest import HarvestConfig, harvest

    sae = SparseAutoencoder(
        SAEConfig(n_latents=args.latents, method="topk", method_params={"k": 32}, d_in=128, b_dec_init="zero")
    )
    sae.reset_weights(torch.Generator().manual_seed(0))
    hv = harvest(HarvestConfig(games=args.games, seed=1_000_003))
    with torch.no_grad():
        codes = SparseCodes.from_dense(sae.encode(torch.from_numpy(hv.activations)).float())
    rng = np.random.default_rng(0)
    squares = rng.choice(64, args.tasks, replace=False)
    t_new = t_old = 0.0
    gap = {"J": 0.0, "w": 0.0, "b": 0.0}
    for sq in squares:
        y = (hv.labels[:, sq] == 1).astype(float)
        if y.all() or not y.any():
            continue
        t0 = time.perf_counter()
        fast = fit_probes(codes, y)
        t1 = time.perf_counter()
        w, b, f = _plain_fit(codes, y)
        t2 = time.perf_counter()
        t_new, t_old = t_new + t1 - t0, t_old + t2 - t1
        gap["J"] = max(gap["J"], float((fast.objective - f).abs().max()))
        gap["w"] = max(gap["w"], float(((fast.w - w).abs() / w.abs().clamp_min(1e-3)).max()))
        gap["b"] = max(gap["b"], float(((fast.b - b).abs() / b.abs().clamp_min(1e-3)).max()))
    print(json.dumps({"bench": "probe_fit", "latents": args.latents, "rows": codes.n_rows, "nonzeros": int(codes.vals.numel()),
                      "tasks": len(squares), "new_s": round(t_new, 2), "old_s": round(t_old, 2), "speedup": round(t_old / t_new, 1),
                      "max_gap_J_abs": gap["J"], "max_gap_w_rel": gap["w"], "max_gap_b_rel": gap["b"],
                      "date": time.strftime("%Y-%m-%d %H:%M:%S")}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
