"""Time the OthelloGPT activation harvest against the bare model forward to the same layer.

Interleaved in one process, medians reported; the ratio is bare-forward time / harvest time
(≥ 0.9 means the harvest adds at most ~10% on top of the model). Usage:
    python bench/harvest_othello.py [--games 2000] [--reps 5] [--layer 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from saelab.sources.othello.games import generate_games
from saelab.sources.othello.harvest import HarvestConfig, harvest
from saelab.sources.othello.model import CONTEXT, games_to_tokens, load_default_model


def main() -> None:
    """Run the comparison and print a table (or one JSON line)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--games", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_default_model().eval()
    games = generate_games(args.games, seed=123)
    cfg = HarvestConfig(layer=args.layer, games=args.games)
    bare, full = [], []
    for _ in range(args.reps):
        t = time.perf_counter()
        with torch.no_grad():
            for g0 in range(0, len(games), cfg.batch_games):
                model.residual_stream(games_to_tokens(games[g0 : g0 + cfg.batch_games, :CONTEXT]), args.layer)
        bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        harvest(cfg, model=model, games=games)  # games given: labels by replay are included, generation is not
        full.append(time.perf_counter() - t)
    record = {
        "games": args.games,
        "layer": args.layer,
        "bare_forward_s": statistics.median(bare),
        "harvest_s": statistics.median(full),
    }
    record["ratio_bare_over_harvest"] = record["bare_forward_s"] / record["harvest_s"]
    print(
        json.dumps(record)
        if args.json
        else f"bare forward {record['bare_forward_s']:.3f} s, harvest {record['harvest_s']:.3f} s, ratio {record['ratio_bare_over_harvest']:.2f}"
    )


if __name__ == "__main__":
    main()
