"""`saelab methods`, `toy`, `train` and `eval`: the core commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from saelab.api import sparsity_warning
from saelab.commands.common import add_threads, scalar
from saelab.config import SAEConfig, TrainConfig
from saelab.data.toy import ToyConfig, write_toy
from saelab.devices import DEVICES
from saelab.errors import ConfigError
from saelab.evals.evaluate import evaluate
from saelab.evals.k_sweep import k_sweep, parse_ks, require_k
from saelab.evals.reconstruction import EPS_L0
from saelab.evals.refine import refine
from saelab.formats.folder import load_sae
from saelab.methods import ACTIVATIONS, PENALTIES, param_names
from saelab.methods.mapping import load_toml, run_from_mapping
from saelab.methods.resolve import display_name
from saelab.training.factory import make_trainer
from saelab.util.atomic import dumps_json

# Options of `saelab train` that are not config fields.
COMMAND_OPTIONS = ("func", "command", "config", "resume", "overwrite", "no_progress", "threads")


def register(sub) -> None:
    """Add methods, toy, train and eval to the top-level subparsers."""
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
    p.add_argument("--overwrite", action="store_true", help="replace toy data already in --out")
    p.set_defaults(func=cmd_toy)

    add_train_parser(sub)

    p = sub.add_parser("eval", help="evaluate a trained SAE")
    p.add_argument("--sae", required=True)
    p.add_argument("--activations", required=True)
    p.add_argument("--true-dictionary", help=".npy [F, d_in] of true feature directions (adds mmcs)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--k", type=int, help="evaluate a TopK-family SAE at another k")
    p.add_argument(
        "--all-rows", action="store_true", help="use every row even when the file is the SAE's training file"
    )
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--eps-l0", type=float, default=EPS_L0, help="l0_eps counts latents above this per token")
    p.add_argument(
        "--refine",
        action="store_true",
        help="also re-fit non-negative activations on each token's active set with the decoder fixed (refine_* keys)",
    )
    p.add_argument(
        "--k-sweep", help="comma-separated k' values: NMSE and L0 of a TopK-family SAE at each (k_sweep key)"
    )
    p.add_argument(
        "--device",
        metavar="{" + ",".join(DEVICES) + "}",
        default=None,
        help="where the SAE runs; batches follow it (default: cpu)",
    )
    add_threads(p)
    p.set_defaults(func=cmd_eval)


# ---- methods ------------------------------------------------------------------------------


def cmd_methods(args) -> int:
    """List every sparsity method with its parameters and description."""
    rows = []
    for kind, table in (("activation", ACTIVATIONS), ("penalty", PENALTIES)):
        for name in sorted(table):
            cls = table[name]
            params = {
                f.name: {"default": f.default, "help": f.metadata.get("help", "")}
                for f in dataclasses.fields(cls.Params)
            }
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

TOY_FILES = ("activations.npy", "dictionary.npy", "codes.npy", "toy.json")  # what write_toy writes


def cmd_toy(args) -> int:
    """Write sparse-superposition toy data and its true dictionary."""

    cfg = ToyConfig(
        n_features=args.n_features,
        d=args.d,
        n_samples=args.n_samples,
        mean_active=args.mean_active,
        noise=args.noise,
        seed=args.seed,
        decay=args.decay,
    )
    held = [name for name in TOY_FILES if (Path(args.out) / name).exists() or (Path(args.out) / name).is_symlink()]
    if held and not args.overwrite:
        raise ConfigError(
            "out", str(args.out), f"already holds {held[0]}; pass --overwrite to replace the toy data there"
        )
    paths = write_toy(cfg, args.out)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


# ---- train --------------------------------------------------------------------------------

_TYPES = {"int": int, "float": float, "str": str}


def _with_default(text: str, f: dataclasses.Field) -> str:
    """The help text plus "(default: X)" where the field has a default worth showing (None means unset)."""
    if f.default is dataclasses.MISSING or f.default is None or isinstance(f.default, bool) or "default" in text:
        return text
    value = " ".join(str(v) for v in f.default) if isinstance(f.default, tuple) else f.default
    return f"{text} (default: {value})"


def add_config_flags(
    parser: argparse.ArgumentParser,
    config_cls: type,
    skip: tuple[str, ...] = (),
    registry_choices: dict[str, tuple] | None = None,
) -> None:
    """One flag per config field marked for the command line, from the field's type and metadata.

    Booleans become switches: `--name` when the default is False, `--no-name` when it is True.
    `registry_choices` adds choices to fields whose values live in a registry (method, penalty).
    """
    for f in dataclasses.fields(config_cls):
        meta = f.metadata
        if not meta.get("cli", False) or f.name in skip:
            continue
        flags = ("--" + f.name.replace("_", "-"), *meta.get("aliases", ()))
        text = _with_default(meta.get("help", ""), f)
        type_name = str(f.type).replace(" | None", "").strip()
        if (registry_choices or {}).get(f.name):
            meta = {**meta, "choices": registry_choices[f.name]}
        if type_name == "bool":
            if f.default is True:
                parser.add_argument(
                    "--no-" + f.name.replace("_", "-"),
                    dest=f.name,
                    action="store_false",
                    default=None,
                    help="do not " + text,
                )
            else:
                parser.add_argument(*flags, dest=f.name, action="store_true", default=None, help=text)
        elif type_name.startswith("tuple["):
            parser.add_argument(*flags, dest=f.name, nargs=2, type=float, default=None, help=text)
        elif meta.get("choices"):
            # Shown, not enforced here: the config's own check names the field in its one-line error.
            choices = meta["choices"]
            parser.add_argument(
                *flags,
                dest=f.name,
                type=_TYPES[type_name],
                metavar="{" + ",".join(choices) + "}",
                default=None,
                help=text,
            )
        else:
            parser.add_argument(*flags, dest=f.name, type=_TYPES[type_name], default=None, help=text)


def add_train_parser(sub) -> None:
    """`saelab train`: flags for every config field and every method parameter."""
    p = sub.add_parser("train", help="train one SAE (flags) or several (--config FILE.toml)")
    p.add_argument("--config", help="TOML run config; [[sae]] tables train together")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads(p)
    add_config_flags(p, TrainConfig)
    add_config_flags(
        p, SAEConfig, registry_choices={"method": tuple(sorted(ACTIVATIONS)), "penalty": tuple(sorted(PENALTIES))}
    )
    group = p.add_argument_group("method parameters (see `saelab methods`)")
    for name, users in sorted(param_names().items()):
        # Under its own name (`--k` is args.k); SUPPRESS: a flag not given leaves no attribute, so
        # `--k none` reaches the method as None instead of vanishing.
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar="MP_" + name.upper(),  # the help text's metavar as it has been (tests/test_api pins it)
            type=scalar,
            default=argparse.SUPPRESS,
            help="used by " + ", ".join(f"{u} (default {_param_default(u, name)})" for u in users),
        )
    p.set_defaults(func=cmd_train)


def _param_default(method: str, name: str):
    """The default of parameter `name` in the method or penalty called `method`."""
    cls = ACTIVATIONS.get(method) or PENALTIES[method]
    return next(f.default for f in dataclasses.fields(cls.Params) if f.name == name)


def run_config_from_args(args):
    """Build the RunConfig a `saelab train` command line describes."""
    method_params = param_names()
    given = {
        k: v for k, v in vars(args).items() if v is not None and k not in method_params and k not in COMMAND_OPTIONS
    }
    params = {k: v for k, v in vars(args).items() if k in method_params}
    if args.config:
        extra = sorted(set(given) - {"out"} | set(params))
        if extra:
            raise ConfigError(
                extra[0],
                given.get(extra[0], params.get(extra[0])),
                "put it in the --config file (only --out, --resume, --overwrite combine with --config)",
            )
        return load_toml(args.config, out=args.out)
    if "activations" not in given:
        raise ConfigError("activations", None, "required (or use --config FILE.toml)")
    if "out" not in given:
        raise ConfigError("out", None, "required")
    if "n_latents" not in given:
        raise ConfigError("n_latents", None, "required")
    return run_from_mapping({**given, **params})


def _num(value, spec: str) -> str:
    # eval.json holds null where a metric is undefined (zero-variance data): say so instead of failing.
    return "n/a" if value is None else format(value, spec)


def cmd_train(args) -> int:
    """Train and report where the SAEs were written."""

    run = run_config_from_args(args)
    trainer = make_trainer(run, progress=not args.no_progress)
    # Warned once the data has been read and checked, so a run that fails on its input says one line only.
    for cfg in run.saes:
        message = sparsity_warning(cfg.method, cfg.penalty, cfg.target_l0)
        if message is not None:
            print(f"saelab: warning: {display_name(cfg)}: {message}", file=sys.stderr)
    members = trainer.fit(resume=args.resume, overwrite=args.overwrite)
    for m in members if trainer.world.is_main else []:  # torchrun: one summary, from the rank that wrote it
        ev = json.loads((m.out / "eval.json").read_text())
        print(
            f"{display_name(m.cfg)}: L0 {_num(ev['l0'], '.2f')}  NMSE {_num(ev['nmse'], '.4f')}  dead {_num(ev['dead_fraction'], '.3f')}  → {m.out}"
        )
    if trainer.world.is_main and not args.no_progress and trainer.throughput is not None:
        print(trainer.throughput.summary())
    return 0


# ---- eval ---------------------------------------------------------------------------------

REFINE_KEYS = ("refine_nmse_before", "refine_nmse_after", "refine_scale", "refine_scale_sum", "refine_zeroed_fraction")
EVAL_KEYS = (
    "l0",
    "l0_eps",
    "nmse",
    "explained_variance",
    "cos_sim",
    "l2_ratio",
    "relative_reconstruction_bias",
    "dead_fraction",
    "dense_fraction",
    "mmcs",
)


def cmd_eval(args) -> int:
    """Evaluate a saved SAE on activations; print a table or one JSON object."""

    rows = "all" if args.all_rows else "auto"
    ks = parse_ks(args.k_sweep) if args.k_sweep is not None else None
    if ks is not None and args.k is not None:
        raise ConfigError("k_sweep", args.k_sweep, "give either --k or --k-sweep")
    if ks is not None:
        # Checked before the (longer) main evaluation, so a non-TopK SAE fails at once.
        require_k(load_sae(args.sae), args.k_sweep)
    result = evaluate(
        args.sae,
        args.activations,
        true_dictionary=args.true_dictionary,
        rows=rows,
        k=args.k,
        batch_size=args.batch_size,
        eps_l0=args.eps_l0,
        device=args.device,
    )
    out = result.to_dict()
    if args.refine:
        from saelab.util.progress import stage

        with stage("eval: refine (non-negative re-fit on each token's active set)"):
            out.update(refine(args.sae, args.activations, rows=rows, device=args.device).to_dict())
    if ks is not None:
        out["k_sweep"] = [
            p.to_dict()
            for p in k_sweep(
                args.sae,
                args.activations,
                ks,
                rows=rows,
                batch_size=args.batch_size,
                eps_l0=args.eps_l0,
                device=args.device,
            )
        ]
    if args.json:
        print(dumps_json(out))
    else:
        print(
            f"{args.sae} on {args.activations} ({result.rows} rows, {result.tokens} tokens, metrics in {result.normalization}-normalized space)"
        )
        for key in EVAL_KEYS + (REFINE_KEYS if args.refine else ()):
            if key in out:
                print(f"  {key:<30} {_num(out[key], '.4f')}")
        if args.refine:
            print(
                f"  refinement: {out['refine_iterations']} iterations, max KKT residual {out['refine_max_residual']:.2e}"
                f" ({'converged' if out['refine_converged'] else 'NOT converged'})"
            )
        for p in out.get("k_sweep", ()):
            where = f" (top k'·B over batches of {p['batch_rows']} rows)" if "batch_rows" in p else ""
            print(f"  k'={p['k']:<8.4g} {p['mode']:<10} L0 {p['l0']:.2f}  NMSE {_num(p['nmse'], '.4f')}{where}")
    return 0
