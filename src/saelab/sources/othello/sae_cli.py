"""`saelab othello activations` and `saelab othello score`: the testbed's SAE-facing commands."""

from __future__ import annotations

import json

from saelab.errors import ConfigError


def add_commands(sub) -> None:
    """Register the harvest and score sub-commands on the `othello` sub-parser group."""
    a = sub.add_parser("activations", help="harvest residual-stream activations with aligned board-state labels")
    a.add_argument("--layer", type=int, default=3, help="residual stream after block L (0 = embeddings)")
    a.add_argument("--games", type=int, default=20_000)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--trim-start", type=int, default=5, help="drop this many first positions of each game")
    a.add_argument("--trim-end", type=int, default=5, help="drop this many last positions of the 59")
    a.add_argument("--model", default="default", help="'default' (the committed model) or a model folder")
    a.add_argument("--out", required=True)
    a.set_defaults(func=cmd_activations)

    s = sub.add_parser("score", help="good classifiers, coverage, L0 and NMSE of an SAE trained on OthelloGPT activations")
    s.add_argument("--sae", required=True)
    s.add_argument("--games", type=int, default=2000, help="held-out games to harvest")
    s.add_argument("--seed", type=int, default=None, help="their seed (default: the training seed + 1000003)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_score)


def cmd_activations(args) -> int:
    """Harvest and write activations.npy, labels.npy, positions.npy and source.json."""
    from pathlib import Path

    from saelab.sources.othello.harvest import HarvestConfig, harvest, write_harvest

    out = Path(args.out)
    if (out / "source.json").exists():
        raise ConfigError("out", args.out, "already holds a harvest; choose another folder")
    cfg = HarvestConfig(layer=args.layer, games=args.games, seed=args.seed, trim_start=args.trim_start, trim_end=args.trim_end, model=args.model)
    h = harvest(cfg)
    write_harvest(h, out)
    print(json.dumps({"out": str(out), "rows": int(len(h.activations)), "d_model": int(h.activations.shape[1]), **{k: h.source[k] for k in ("layer", "trim_start", "trim_end", "games")}}))
    return 0


def cmd_score(args) -> int:
    """Print the board-state score of an SAE folder."""
    from saelab.sources.othello.score import score_folder

    if args.games < 1:
        raise ConfigError("games", args.games, "must be ≥ 1")
    result = score_folder(args.sae, games=args.games, seed=args.seed).to_dict()
    if args.json:
        keys = ("good_classifiers", "good_classifier_latents", "findable", "coverage", "l0", "nmse")
        print(json.dumps({**{k: result[k] for k in keys}, **{k: v for k, v in result.items() if k not in keys}}))
    else:
        print(f"good classifiers {result['good_classifiers']} / {result['findable']} findable, good latents {result['good_classifier_latents']}, "
              f"coverage {result['coverage']:.3f}, L0 {result['l0']:.2f}, NMSE {result['nmse']:.4f} ({result['positions']} positions, {result['games']} games)")
    return 0
