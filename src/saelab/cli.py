"""Command line: argument parsing only; the work happens in the modules it calls."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
from pathlib import Path

from saelab.config import require_positive_int
from saelab.errors import ConfigError, SaelabError

# Sub-command groups living in optional modules; each exposes register(subparsers).
PLUGINS = ("saelab.sources.othello.cli", "saelab.sources.lm_cli")


def _scalar(text: str):
    """Parse a method parameter from the command line: int, float, none, or a string."""
    if text.lower() in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


# ---- methods ------------------------------------------------------------------------------

def cmd_methods(args) -> int:
    """List every sparsity method with its parameters and description."""
    from saelab.methods.registry import ACTIVATIONS, PENALTIES, _ensure_loaded

    _ensure_loaded()
    rows = []
    for kind, table in (("activation", ACTIVATIONS), ("penalty", PENALTIES)):
        for name in sorted(table):
            cls = table[name]
            params = {f.name: {"default": f.default, "help": f.metadata.get("help", "")} for f in dataclasses.fields(cls.Params)}
            rows.append({"name": name, "kind": kind, "description": cls.description, "params": params})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['name']:<13} {r['kind']:<10} {r['description']}")
        for p, info in r["params"].items():
            print(f"{'':<13} --{p.replace('_', '-')} (default {info['default']}): {info['help']}")
    return 0


# ---- toy ----------------------------------------------------------------------------------

def cmd_toy(args) -> int:
    """Write sparse-superposition toy data and its true dictionary."""
    from saelab.data.toy import ToyConfig, write_toy

    cfg = ToyConfig(n_features=args.n_features, d=args.d, n_samples=args.n_samples, mean_active=args.mean_active, noise=args.noise, seed=args.seed, decay=args.decay)
    paths = write_toy(cfg, args.out)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


# ---- train --------------------------------------------------------------------------------

TRAIN_FLAGS = {
    # flag dest → (type, help); dests match SAEConfig / TrainConfig field names.
    "activations": (str, "activation file (.npy/.safetensors) or folder of shards"),
    "eval_activations": (str, "held-out activations (default: the tail of --activations)"),
    "eval_fraction": (float, "fraction of rows held out for evaluation (default 0.05)"),
    "method": (str, "sparsity method (see `saelab methods`)"),
    "penalty": (str, "sparsity penalty added to the loss (l1, lp, smoothed_l0, freshman, without_topk)"),
    "alpha": (float, "penalty coefficient"),
    "n_latents": (int, "number of latents"),
    "normalize": (str, "input normalization: none | unit | scalar"),
    "steps": (int, "training steps"),
    "tokens": (int, "training tokens (rounded up to whole batches)"),
    "epochs": (float, "passes over the training rows"),
    "batch_size": (int, "rows per batch"),
    "seed": (int, "random seed"),
    "lr": (float, "learning rate (default 2e-4/sqrt(n/2^14))"),
    "adam_eps": (float, "Adam epsilon"),
    "warmup_steps": (int, "linear warm-up steps"),
    "decay": (str, "learning-rate decay: none | linear | cosine"),
    "decay_fraction": (float, "fraction of steps the decay spans"),
    "grad_clip": (float, "clip the gradient norm to this value"),
    "log_every": (int, "steps between metric log lines"),
    "checkpoint_every": (int, "steps between checkpoints (0: only at the end)"),
    "b_dec_init": (str, "b_dec init: geometric_median | mean | zero"),
    "encoder_init": (str, "encoder init: decoder_transpose | random"),
    "k_aux": (int, "AuxK: number of dead latents used"),
    "aux_coef": (float, "AuxK coefficient (default 1/32)"),
    "dead_tokens": (int, "tokens without firing after which a latent counts as dead"),
    "name": (str, "name of the SAE"),
    "kernel": (str, "dense (reference) | sparse (TopK family) | auto"),
    "shuffle_buffer_mb": (int, "memory for the shuffle buffer (MiB)"),
}
TRAIN_SWITCHES = {
    "auxk": "enable the AuxK auxiliary loss on dead latents",
    "penalty_decoder_norm": "weight the penalty by decoder row norms",
}


def add_train_parser(sub) -> None:
    """`saelab train`: flags for every config field and every method parameter."""
    from saelab.methods.registry import param_names

    p = sub.add_parser("train", help="train one SAE (flags) or several (--config FILE.toml)")
    p.add_argument("--config", help="TOML run config; [[sae]] tables train together")
    p.add_argument("--out", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    for dest, (typ, text) in TRAIN_FLAGS.items():
        p.add_argument("--" + dest.replace("_", "-"), dest=dest, type=typ, default=None, help=text)
    p.add_argument("--betas", nargs=2, type=float, default=None, help="Adam betas")
    for dest, text in TRAIN_SWITCHES.items():
        p.add_argument("--" + dest.replace("_", "-"), dest=dest, action="store_true", default=None, help=text)
    p.add_argument("--no-decoder-unit-norm", dest="decoder_unit_norm", action="store_false", default=None, help="let decoder rows change norm")
    p.add_argument("--no-scan", dest="scan", action="store_false", default=None, help="skip the NaN/inf scan of the data")
    group = p.add_argument_group("method parameters (see `saelab methods`)")
    for name, users in sorted(param_names().items()):
        group.add_argument("--" + name.replace("_", "-"), dest="mp_" + name, type=_scalar, default=None, help="used by " + ", ".join(users))
    p.set_defaults(func=cmd_train)


def run_config_from_args(args):
    """Build the RunConfig a `saelab train` command line describes."""
    from saelab.config import run_from_mapping, load_toml

    given = {k: v for k, v in vars(args).items() if v is not None and not k.startswith("mp_") and k not in ("func", "command", "config", "resume", "overwrite", "no_progress", "threads")}
    params = {k[3:]: v for k, v in vars(args).items() if k.startswith("mp_") and v is not None}
    if args.config:
        extra = sorted(set(given) - {"out"} | set(params))
        if extra:
            raise ConfigError(extra[0], given.get(extra[0], params.get(extra[0])), "put it in the --config file (only --out, --resume, --overwrite combine with --config)")
        run = load_toml(args.config)
        if args.out:
            run.train.out = args.out
        return run.validate()
    if "activations" not in given:
        raise ConfigError("activations", None, "required (or use --config FILE.toml)")
    if "out" not in given:
        raise ConfigError("out", None, "required")
    if "n_latents" not in given:
        raise ConfigError("n_latents", None, "required")
    return run_from_mapping({**given, **params})


def set_threads(threads: int | None) -> None:
    """Apply `--threads` (validated: a shared machine is the reason to set it, a typo must not go unnoticed)."""
    if threads is None:
        return
    require_positive_int("threads", threads)
    import torch

    torch.set_num_threads(threads)


def cmd_train(args) -> int:
    """Train and report where the SAEs were written."""
    from saelab.train import Trainer

    run = run_config_from_args(args)
    set_threads(args.threads)
    trainer = Trainer(run, progress=not args.no_progress)
    members = trainer.fit(resume=args.resume, overwrite=args.overwrite)
    for m in members:
        ev = json.loads((m.out / "eval.json").read_text())
        print(f"{m.cfg.display_name()}: L0 {ev['l0']:.2f}  NMSE {ev['nmse']:.4f}  dead {ev['dead_fraction']:.3f}  → {m.out}")
    return 0


# ---- eval ---------------------------------------------------------------------------------

def cmd_eval(args) -> int:
    """Evaluate a saved SAE on activations; print a table or one JSON object."""
    import numpy as np
    import torch

    from saelab.data.store import ActivationStore
    from saelab.evals.reconstruction import evaluate_store
    from saelab.io import load_sae, read_saelab_record

    set_threads(args.threads)
    sae = load_sae(args.sae)
    record = read_saelab_record(args.sae)
    if args.k is not None:
        if not hasattr(sae.activation.params, "k"):
            raise ConfigError("k", args.k, f"method {sae.cfg.method!r} has no k")
        sae.activation = sae.activation.with_params(k=args.k)
    store = ActivationStore(args.activations)
    if store.d_in != sae.cfg.d_in:
        raise SaelabError(f"activations={args.activations!r}: d_in is {store.d_in}, the SAE expects {sae.cfg.d_in}")
    store.scan_finite()
    rows, which = (0, store.n_rows), "all"
    train_path = (record.get("train") or {}).get("activations")
    split = record.get("split") or {}
    if not args.all_rows and train_path and Path(train_path).resolve() == Path(args.activations).resolve() and not split.get("eval_file"):
        rows, which = tuple(split["eval_rows"]), "held-out"
    dictionary = None
    if args.true_dictionary:
        from saelab.data.store import ActivationStore as _Store

        d = _Store(args.true_dictionary)
        dictionary = torch.from_numpy(d.read_range(0, d.n_rows))
    result = evaluate_store(sae, store, rows, batch_size=args.batch_size, dictionary=dictionary)
    out = result.to_dict()
    out["rows"] = which
    out["method"] = sae.cfg.method
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.sae} on {args.activations} ({which} rows, {result.tokens} tokens, metrics in {result.normalization}-normalized space)")
        for key in ("l0", "nmse", "explained_variance", "cos_sim", "l2_ratio", "relative_reconstruction_bias", "dead_fraction", "dense_fraction", "mmcs"):
            if key in out:
                print(f"  {key:<30} {out[key]:.4f}")
    _ = np
    return 0


# ---- demo ---------------------------------------------------------------------------------

def cmd_demo(args) -> int:
    """The README's main job."""
    from saelab.demo import run_demo

    run_demo(out=args.out, quick=args.quick, toy=args.toy)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full `saelab` parser, plug-in command groups included."""
    parser = argparse.ArgumentParser(prog="saelab", description="Train, compare and evaluate sparse autoencoders.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list sparsity methods and their parameters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("toy", help="write sparse-superposition toy data with its true dictionary")
    p.add_argument("--out", required=True)
    p.add_argument("--n-features", type=int, default=256)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--n-samples", type=int, default=50_000)
    p.add_argument("--mean-active", type=float, default=5.0)
    p.add_argument("--noise", type=float, default=0.0)
    p.add_argument("--decay", type=float, default=0.0, help="feature-frequency decay (0: all equally frequent)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_toy)

    add_train_parser(sub)

    p = sub.add_parser("eval", help="evaluate a trained SAE")
    p.add_argument("--sae", required=True)
    p.add_argument("--activations", required=True)
    p.add_argument("--true-dictionary", help=".npy [F, d_in] of true feature directions (adds mmcs)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--k", type=int, help="evaluate a TopK-family SAE at another k")
    p.add_argument("--all-rows", action="store_true", help="use every row even when the file is the SAE's training file")
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="the main job: train several methods on the default source and compare them")
    p.add_argument("--quick", action="store_true", help="a short version for smoke tests")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--toy", action="store_true", help="use sparse toy data instead of OthelloGPT")
    p.set_defaults(func=cmd_demo)

    for module in PLUGINS:
        try:
            plugin = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue  # the optional module is not part of this install
            raise
        plugin.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a sub-command; user errors become one line on stderr and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SaelabError as e:
        print(f"saelab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("saelab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) left: stop quietly, and keep the interpreter's final flush
        # from raising again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
