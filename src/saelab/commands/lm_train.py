"""`saelab lm train`: SAEs on several sites of a live Hugging Face LM, from streamed text, no activation cache."""

from __future__ import annotations

import argparse
import json
import resource
import sys
from typing import Any

from saelab.api import sparsity_warning
from saelab.commands.common import add_threads, scalar
from saelab.commands.core import add_config_flags
from saelab.config import SAE_FIELDS, TRAIN_FIELDS, RunConfig, SAEConfig, TrainConfig
from saelab.errors import ConfigError
from saelab.methods import ACTIVATIONS, PENALTIES, param_names
from saelab.methods.mapping import run_from_mapping
from saelab.methods.resolve import display_name, resolve_run
from saelab.sources.lm.online_trainer import OnlineTrainer, expand_saes
from saelab.sources.lm.stream import OnlineConfig, parse_sites, site_of_table
from saelab.util.config_files import read_config

# TrainConfig fields that describe an activation file, not a text stream.
NOT_ONLINE = (
    "activations",
    "eval_activations",
    "eval_fraction",
    "shuffle_buffer_mb",
    "scan",
    "shard_latents",
    "latent_shards",
    "epochs",
)


def build_run(args: argparse.Namespace) -> tuple[RunConfig, OnlineConfig, list[int]]:
    """The RunConfig (one SAE per table and site), the OnlineConfig and each SAE's site index, from flags and --config."""
    given = {k: v for k, v in vars(args).items() if v is not None and k in (TRAIN_FIELDS | SAE_FIELDS)}
    method_params = param_names()
    params = {k: v for k, v in vars(args).items() if k in method_params}
    data: dict[str, Any] = read_config(args.config) if args.config else {}
    for key in NOT_ONLINE:
        if key in data:
            raise ConfigError(key, data[key], "describes an activation file; `saelab lm train` reads text (drop it)")
    data.update({**given, **params})  # flags add to the file and override it
    tables = data.pop("sae", None)
    tables = [tables] if isinstance(tables, dict) else tables
    table_sites: list[tuple[int, str] | None] = [None]
    if isinstance(tables, list):
        tables = [dict(t) if isinstance(t, dict) else t for t in tables]
        table_sites = [
            site_of_table(t.pop("site"), f"sae[{i}].site") if isinstance(t, dict) and "site" in t else None
            for i, t in enumerate(tables)
        ]
        data["sae"] = tables
    sites = parse_sites(args.sites) if args.sites else ()
    sites = tuple(dict.fromkeys(sites + tuple(s for s in table_sites if s is not None)))
    if not sites:
        raise ConfigError("sites", None, "required: --sites 3,6,9[:KIND] (or a `site` in every [[sae]] table)")
    data["activations"] = args.text  # TrainConfig needs a data name; the folders record the text as `dataset`
    if "n_latents" not in data and not any(isinstance(t, dict) and "n_latents" in t for t in (tables or [])):
        raise ConfigError("n_latents", None, "required")
    run = run_from_mapping(data)
    saes, index = expand_saes(run.saes, table_sites, sites)
    online = OnlineConfig(
        model=args.model,
        text=args.text,
        sites=sites,
        context=args.context,
        windows_per_forward=args.lm_batch_size,
        buffer_tokens=args.buffer_tokens,
        model_dtype=args.model_dtype,
        device=run.train.device,
        drop_first=not args.keep_first,
        outlier_factor=args.drop_outliers,
        prepend_bos=not args.no_bos,
        text_field=args.text_field,
        split=args.split,
        eval_tokens=args.eval_tokens,
        model_name=args.model_name,
    ).validate()
    if online.buffer_tokens is not None and online.buffer_tokens < 2 * run.train.batch_size:
        raise ConfigError(
            "buffer_tokens",
            online.buffer_tokens,
            f"must hold at least two batches ({2 * run.train.batch_size} rows): it is refilled when half empty",
        )
    return resolve_run(RunConfig(run.train, saes)), online, index


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cmd_lm_train(args: argparse.Namespace) -> int:
    """Train, then report each SAE's held-out L0 / NMSE, the throughput and peak memory."""
    run, online, index = build_run(args)
    say = lambda m: print(m, file=sys.stderr, flush=True)
    trainer = OnlineTrainer(run, online, index, progress=not args.no_progress, log=say, overlap=args.overlap)
    for cfg in run.saes if trainer.world.is_main else []:
        message = sparsity_warning(cfg.method, cfg.penalty, cfg.target_l0)
        if message is not None:
            say(f"saelab: warning: {display_name(cfg)}: {message}")
    members = trainer.fit(resume=args.resume, overwrite=args.overwrite)
    if not trainer.world.is_main:
        return 0
    for m in members:
        ev = json.loads((m.out / "eval.json").read_text())
        print(
            f"{display_name(m.cfg)}: L0 {ev['l0']:.2f}  NMSE {ev['nmse']:.4f}  dead {ev['dead_fraction']:.3f}  → {m.out}"
        )
    if trainer.throughput is not None:
        tp = trainer.throughput
        print(
            f"throughput: {tp.tokens_per_s:,.0f} tokens/s end to end (LM forward included), "
            f"{tp.step_tokens_per_s:,.0f} tokens/s in the SAE steps alone; {trainer.stream.tokens_seen:,} LM tokens read"
        )
    print(f"peak RSS: {peak_rss_mib():,.0f} MiB")
    return 0


def register(sub: Any) -> None:
    """Add `saelab lm train` to the `lm` subparsers."""
    p = sub.add_parser(
        "train", help="train SAEs on several sites of a live LM from streamed text (no activation cache)"
    )
    p.add_argument("--model", required=True, help="hub name, local model folder, or path of a .gguf file")
    p.add_argument(
        "--model-name",
        default=None,
        help="hub name recorded in the SAE folders (default: --model, or its file name for a local path)",
    )
    p.add_argument(
        "--text", required=True, help="local .txt/.jsonl file or folder, or a HF dataset NAME[:CONFIG] (streamed)"
    )
    p.add_argument("--sites", default=None, help="layers to hook: 3,6,9 (resid_post), 3,6,9:mlp_out, or 3:attn_out,6")
    p.add_argument("--context", type=int, default=64, help="tokens per window, BOS included (default 64)")
    p.add_argument("--lm-batch-size", type=int, default=32, help="windows per LM forward (default 32)")
    p.add_argument(
        "--buffer-tokens",
        type=int,
        default=None,
        help="rows per site's shuffling buffer, refilled when half empty (default: a quarter of free memory, at most 262144)",
    )
    p.add_argument(
        "--eval-tokens",
        type=int,
        default=4096,
        help="held-out rows per site, from the first windows of the text (default 4096)",
    )
    p.add_argument("--text-field", default="text", help="JSONL key / dataset column holding the text")
    p.add_argument("--split", default="train", help="dataset split (HF datasets)")
    p.add_argument("--no-bos", action="store_true", help="do not start each window with BOS")
    p.add_argument("--keep-first", action="store_true", help="keep position 0 (BOS); dropped by default")
    p.add_argument(
        "--drop-outliers",
        type=float,
        default=None,
        metavar="FACTOR",
        help="drop tokens whose norm exceeds FACTOR x the forward batch's median norm",
    )
    p.add_argument("--model-dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument(
        "--overlap",
        action="store_true",
        help="run the LM forward in a second thread while the SAEs step (more threads; see bench/README.md)",
    )
    p.add_argument("--config", help="TOML: train keys, SAE keys and [[sae]] tables, each optionally naming its `site`")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads(p)
    add_config_flags(p, TrainConfig, skip=NOT_ONLINE)
    add_config_flags(
        p, SAEConfig, registry_choices={"method": tuple(sorted(ACTIVATIONS)), "penalty": tuple(sorted(PENALTIES))}
    )
    group = p.add_argument_group("method parameters (see `saelab methods`)")
    for name in sorted(param_names()):
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar="MP_" + name.upper(),
            type=scalar,
            default=argparse.SUPPRESS,
        )
    p.set_defaults(func=cmd_lm_train)
