"""`saelab othello ...` sub-commands: games, train-model, eval-model, probes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from saelab.config import require_positive_int
from saelab.errors import SaelabError
from saelab.io import atomic_write

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
    t.add_argument("--target", choices=("legal", "next"), default="legal",
                   help="legal: uniform over legal next moves (same optimum, less noise); next: recorded move")
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

    from saelab.sources.othello.sae_cli import add_commands

    add_commands(sub)


def load_games_file(path: str) -> np.ndarray:
    """Load and validate a games .npy file ([N, 60] ints, legal records, -1 padding)."""
    from saelab.sources.othello.games import replay_games

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
    from saelab.sources.othello.model import OthelloGPT, load_default_model

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
    from saelab.sources.othello.games import generate_games

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
    from saelab.sources.othello.model import OthelloGPTConfig
    from saelab.sources.othello.train_model import TrainConfig, train

    if args.games_file:
        load_games_file(args.games_file)
    cfg = TrainConfig(
        model=OthelloGPTConfig(n_layer=args.layers, d_model=args.d_model, n_head=args.heads,
                               d_mlp=args.d_mlp, note=args.note),
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
        schedule=args.schedule, target=args.target, seed=args.seed, threads=args.threads,
        time_limit_s=args.time_limit, eval_every=args.eval_every, eval_games=args.eval_games,
        games_file=args.games_file, init_from=args.init_from, ema_decay=args.ema,
    )
    try:
        cfg.validate()
    except ValueError as exc:
        raise SaelabError(str(exc)) from None
    train(cfg, args.out, log=lambda s: print(s, file=sys.stderr))
    return 0


def cmd_eval_model(args) -> int:
    """Print legal_move_accuracy (and per-position figures) of a model on fresh or given games."""
    from saelab.sources.othello.games import generate_games
    from saelab.sources.othello.train_model import evaluate_legal

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
        print(json.dumps(res))
    else:
        print(f"legal_move_accuracy {res['legal_move_accuracy']:.4%} over {res['n_positions']} positions "
              f"of {res['n_games']} games")
        worst = min((a, t) for t, a in enumerate(res["per_position"]) if a is not None)
        print(f"worst position t={worst[1]}: {worst[0]:.4%}")
    return 0


def cmd_probes(args) -> int:
    """Fit per-layer probes and print the findable-pairs table."""
    from saelab.sources.othello.games import generate_games
    from saelab.sources.othello.probes import train_probes

    require_positive_int("--games", args.games)
    model = _load_model(args.model)
    res = train_probes(model, generate_games(args.games, args.seed))
    if args.out:
        from saelab.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(dict(res.to_dict(), games=args.games, seed=args.seed)) + "\n")
    summary = {"layers": res.table(), "best_layer": res.best_layer(), "n_train_positions": res.n_train,
               "n_test_positions": res.n_test}
    print(json.dumps(summary) if args.json else res.markdown())
    return 0
