"""`saelab othello ...`: games, train-model, eval-model, probes, activations, score."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from saelab.config import require_positive_int
from saelab.errors import ConfigError, SaelabError
from saelab.sources.othello.games import generate_games, replay_games
from saelab.sources.othello.harvest import HarvestConfig, harvest, write_harvest
from saelab.sources.othello.model import OthelloGPT, OthelloGPTConfig, load_default_model
from saelab.sources.othello.probes import train_probes
from saelab.sources.othello.score import score_folder
from saelab.sources.othello.train_model import TrainConfig, evaluate_legal, train
from saelab.sources.othello.unfound import CANDIDATES, diagnose_folder
from saelab.util.atomic import atomic_write, atomic_write_text, dumps_json

DEFAULT_EVAL_SEED = 1  # training draws its seeds from SeedSequence([seed, step]); see train_model


def register(subparsers) -> None:
    """Add the `othello` command and its sub-commands to the top-level saelab parser."""
    p = subparsers.add_parser("othello", help="OthelloGPT testbed: games, model, probes")
    sub = p.add_subparsers(dest="othello_command", metavar="{games,train-model,eval-model,probes,activations,score}")
    sub.required = True

    g = sub.add_parser("games", help="write random games as an int array [N, 60] (.npy)")
    g.add_argument("--n", type=int, required=True, help="number of games")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True, help="output .npy file")
    g.set_defaults(func=cmd_games)

    t = sub.add_parser("train-model", help="train OthelloGPT on fresh random games")
    t.add_argument("--out", required=True, help="folder for model.safetensors, config.json, train_log.jsonl")
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--d-model", type=int, default=128)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--d-mlp", type=int, default=512)
    t.add_argument("--steps", type=int, default=6000)
    t.add_argument("--batch-size", type=int, default=64, help="games per step")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--warmup", type=int, default=200, help="warm-up steps")
    t.add_argument("--schedule", choices=("cosine", "linear"), default="cosine")
    t.add_argument(
        "--target",
        choices=("legal", "next"),
        default="legal",
        help="legal: uniform over legal next moves (same optimum, less noise); next: recorded move",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1, help="torch threads")
    t.add_argument("--time-limit", type=float, default=None, help="seconds; anneal and stop by then")
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--eval-games", type=int, default=1000)
    t.add_argument("--games-file", default=None, help="train on these games (.npy) instead of fresh ones")
    t.add_argument("--note", default="", help="why this size; stored in config.json")
    t.add_argument("--init-from", default=None, help="continue training this model folder")
    t.add_argument("--ema", type=float, default=None, help="EMA decay of the saved weights (e.g. 0.995)")
    t.set_defaults(func=cmd_train_model)

    e = sub.add_parser("eval-model", help="legal-move accuracy of the model's top-1 prediction")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--games", type=int, default=None, help="fresh random games (default 10000)")
    src.add_argument("--games-file", default=None, help="games in the format of `othello games`")
    e.add_argument("--seed", type=int, default=DEFAULT_EVAL_SEED, help="seed of fresh games")
    e.add_argument("--model", default=None, help="model folder (default: the committed model)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=cmd_eval_model)

    pr = sub.add_parser("probes", help="per-layer linear probes of the board state")
    pr.add_argument("--games", type=int, default=3000)
    pr.add_argument("--seed", type=int, default=DEFAULT_EVAL_SEED + 1)
    pr.add_argument("--model", default=None, help="model folder (default: the committed model)")
    pr.add_argument("--out", default=None, help="also write the full result (AUROC per pair, findable masks) as JSON")
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    pr.set_defaults(func=cmd_probes)

    add_sae_commands(sub)


def load_games_file(path: str) -> np.ndarray:
    """Load and validate a games .npy file ([N, 60] ints, legal records, -1 padding)."""

    p = Path(path)
    if not p.is_file():
        raise SaelabError(f"--games-file={path}: no such file")
    try:
        games = np.load(p, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a non-.npy file
        raise SaelabError(f"--games-file={path}: not a readable .npy array ({type(exc).__name__})") from None
    if games.ndim != 2 or games.shape[1] != 60 or games.shape[0] == 0:
        raise SaelabError(f"--games-file={path}: shape {games.shape}, expected [N>0, 60]")
    if not np.issubdtype(games.dtype, np.integer):
        raise SaelabError(f"--games-file={path}: dtype {games.dtype}, expected integers")
    try:
        replay_games(games, labels=False, legal=False)
    except ValueError as exc:
        raise SaelabError(f"--games-file={path}: {exc}") from None
    return games.astype(np.int16)


def _load_model(folder):

    if folder is None:
        try:
            return load_default_model()
        except FileNotFoundError as exc:
            raise SaelabError(f"model: {exc}") from None
    if not (Path(folder) / "model.safetensors").is_file():
        raise SaelabError(f"--model={folder}: no model.safetensors there")
    return OthelloGPT.load(folder)


def cmd_games(args) -> int:
    """Write `--n` random games with `--seed` to `--out` (.npy), atomically."""

    require_positive_int("--n", args.n)
    if args.seed < 0:
        raise SaelabError(f"--seed={args.seed}: must be >= 0")
    out = Path(args.out)
    if out.suffix != ".npy":
        raise SaelabError(f"--out={args.out}: must end in .npy")
    if not out.parent.exists():
        raise SaelabError(f"--out={args.out}: folder {out.parent} does not exist")
    t0 = time.time()
    games = generate_games(args.n, args.seed)
    atomic_write(out, lambda f: np.save(f, games))
    dt = time.time() - t0
    print(f"wrote {args.n} games to {out} in {dt:.2f}s ({args.n / max(dt, 1e-9):.0f} games/s)", file=sys.stderr)
    return 0


def cmd_train_model(args) -> int:
    """Train OthelloGPT with the given hyper-parameters into `--out`."""

    if args.games_file:
        load_games_file(args.games_file)
    cfg = TrainConfig(
        model=OthelloGPTConfig(
            n_layer=args.layers, d_model=args.d_model, n_head=args.heads, d_mlp=args.d_mlp, note=args.note
        ),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup,
        schedule=args.schedule,
        target=args.target,
        seed=args.seed,
        threads=args.threads,
        time_limit_s=args.time_limit,
        eval_every=args.eval_every,
        eval_games=args.eval_games,
        games_file=args.games_file,
        init_from=args.init_from,
        ema_decay=args.ema,
    )
    try:
        cfg.validate()
    except ValueError as exc:
        raise SaelabError(str(exc)) from None
    train(cfg, args.out, log=lambda s: print(s, file=sys.stderr))
    return 0


def cmd_eval_model(args) -> int:
    """Print legal_move_accuracy (and per-position figures) of a model on fresh or given games."""

    if args.games_file:
        games, source = load_games_file(args.games_file), {"games_file": args.games_file}
    else:
        n = 10_000 if args.games is None else args.games
        require_positive_int("--games", n)
        games, source = generate_games(n, args.seed), {"seed": args.seed}
    model = _load_model(args.model)
    t0 = time.time()
    res = evaluate_legal(model, games)
    res.update(source)
    res["model"] = args.model or "committed"
    res["eval_seconds"] = round(time.time() - t0, 2)
    if args.json:
        print(dumps_json(res))
    else:
        print(
            f"legal_move_accuracy {res['legal_move_accuracy']:.4%} over {res['n_positions']} positions "
            f"of {res['n_games']} games"
        )
        worst = min((a, t) for t, a in enumerate(res["per_position"]) if a is not None)
        print(f"worst position t={worst[1]}: {worst[0]:.4%}")
    return 0


def cmd_probes(args) -> int:
    """Fit per-layer probes and print the findable-pairs table."""

    require_positive_int("--games", args.games)
    model = _load_model(args.model)
    res = train_probes(model, generate_games(args.games, args.seed))
    if args.out:
        atomic_write_text(args.out, dumps_json(dict(res.to_dict(), games=args.games, seed=args.seed)) + "\n")
    summary = {
        "layers": res.table(),
        "best_layer": res.best_layer(),
        "n_train_positions": res.n_train,
        "n_test_positions": res.n_test,
    }
    print(dumps_json(summary) if args.json else res.markdown())
    return 0


def add_sae_commands(sub) -> None:
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

    s = sub.add_parser(
        "score", help="good classifiers, coverage, L0 and NMSE of an SAE trained on OthelloGPT activations"
    )
    s.add_argument("--sae", required=True)
    s.add_argument("--games", type=int, default=2000, help="held-out games to harvest")
    s.add_argument("--seed", type=int, default=None, help="their seed (default: the training seed + 1000003)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_score)

    u = sub.add_parser(
        "unfound",
        help="why findable board-state pairs have no single-latent classifier: split over two latents, near, or absent",
    )
    u.add_argument("--sae", required=True)
    u.add_argument("--games", type=int, default=2000, help="held-out games to harvest")
    u.add_argument("--seed", type=int, default=None, help="their seed (default: the training seed + 1000003)")
    u.add_argument(
        "--candidates", type=int, default=CANDIDATES, help="best single latents per pair whose sums of two are tried"
    )
    u.add_argument("--json", action="store_true", help="print one JSON object")
    u.set_defaults(func=cmd_unfound)


def cmd_activations(args) -> int:
    """Harvest and write activations.npy, labels.npy, positions.npy and source.json."""

    out = Path(args.out)
    if (out / "source.json").exists():
        raise ConfigError("out", args.out, "already holds a harvest; choose another folder")
    cfg = HarvestConfig(
        layer=args.layer,
        games=args.games,
        seed=args.seed,
        trim_start=args.trim_start,
        trim_end=args.trim_end,
        model=args.model,
    )
    h = harvest(cfg)
    write_harvest(h, out)
    print(
        json.dumps(
            {
                "out": str(out),
                "rows": int(len(h.activations)),
                "d_model": int(h.activations.shape[1]),
                **{k: h.source[k] for k in ("layer", "trim_start", "trim_end", "games")},
            }
        )
    )
    return 0


def cmd_score(args) -> int:
    """Print the board-state score of an SAE folder."""

    if args.games < 1:
        raise ConfigError("games", args.games, "must be ≥ 1")
    from saelab.util.progress import stage

    with stage(f"othello score ({args.games} held-out games: harvest, encode, findable probes, AUROC, bootstrap)"):
        result = score_folder(args.sae, games=args.games, seed=args.seed).to_dict()
    if args.json:
        keys = ("good_classifiers", "good_classifier_latents", "findable", "coverage", "l0", "nmse")
        print(dumps_json({**{k: result[k] for k in keys}, **{k: v for k, v in result.items() if k not in keys}}))
    else:
        print(
            f"good classifiers {result['good_classifiers']:g} / {result['findable']} findable (cross-fitted; same games: "
            f"{result['good_classifiers_naive']}), good latents {result['good_classifier_latents']}, "
            f"coverage {result['coverage']:.3f}, L0 {result['l0']:.2f}, NMSE {result['nmse']:.4f} ({result['positions']} positions, {result['games']} games)"
        )
    return 0


def cmd_unfound(args) -> int:
    """Print the diagnosis of the findable pairs no single latent of an SAE classifies."""

    if args.games < 1:
        raise ConfigError("games", args.games, "must be ≥ 1")
    if args.candidates < 2:
        raise ConfigError("candidates", args.candidates, "must be ≥ 2 (sums of two latents)")
    report = diagnose_folder(args.sae, games=args.games, seed=args.seed, candidates=args.candidates)
    print(dumps_json(report.to_dict()) if args.json else report.markdown())
    return 0
